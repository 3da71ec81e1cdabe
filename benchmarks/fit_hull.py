"""What limits a silhouette fit of a procsynth class (docs/fitting.md): the visual hull of its fitted views.

Carves the visual hull of the 20 target masks of ``benchmarks/fit.py`` (procsynth class ``--cls``, 128 px) on an
``--voxels``³ grid over the bounding cube, and prints its connected components, the share of the largest, and the
held-out silhouette IoU of the hull and of its largest component alone (voxel centres splatted to pixels; a voxel
is smaller than a pixel at 160³). Also: foreground components per target mask.
Run: ``.venv/bin/python benchmarks/fit_hull.py [--cls 0] [--voxels 160]``
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

import argparse  # noqa: E402
import json  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import ndimage  # noqa: E402

from services.common.spec.meshgen import FitParams  # noqa: E402
from services.meshgen.fit import iou, target_from_mesh  # noqa: E402
from services.meshgen.registry import get_family  # noqa: E402
from services.render import api as render_api  # noqa: E402
from services.render.renderers.soft import project  # noqa: E402


def pixels(records, points):
    """(views, n, 2) integer pixel (col, row) of each point in each view."""
    cams = render_api.cameras_from_records(records).to(torch.float64)
    uv, _ = project(torch.as_tensor(points, dtype=torch.float64), cams)
    return np.floor(uv.numpy()).astype(np.int64)


def splat(records, points, size):
    out = np.zeros((len(records), size, size), bool)
    for k, cr in enumerate(pixels(records, points)):
        ok = (cr[:, 0] >= 0) & (cr[:, 0] < size) & (cr[:, 1] >= 0) & (cr[:, 1] < size)
        out[k][cr[ok, 1], cr[ok, 0]] = True
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cls", type=int, default=0)
    parser.add_argument("--voxels", type=int, default=160)
    args = parser.parse_args()
    family = get_family("procsynth")
    mesh = family.generate_item(family.parse_params({}), 0, args.cls, 0).obj
    target = target_from_mesh(mesh, FitParams())
    n, size = args.voxels, target.masks.shape[1]
    g = (np.arange(n) + 0.5) / n * 2.4 - 1.2  # the bounding sphere (radius 1) with a margin
    grid = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3) * target.radius + target.centre
    occupied = np.ones(len(grid), bool)
    for record, mask in zip(target.records, target.masks):  # one view at a time: bounded memory
        cr = pixels([record], grid)[0]
        ok = (cr[:, 0] >= 0) & (cr[:, 0] < size) & (cr[:, 1] >= 0) & (cr[:, 1] < size)
        inside = np.zeros(len(grid), bool)
        inside[ok] = mask[cr[ok, 1], cr[ok, 0]]
        occupied &= inside
    labels, count = ndimage.label(occupied.reshape(n, n, n))
    sizes = np.bincount(labels.ravel())[1:]
    largest = labels.ravel() == int(np.argmax(sizes)) + 1
    held = lambda points: float(np.mean([iou(p, t) for p, t in zip(splat(target.held_records, points, size),  # noqa: E731
                                                                     target.held_masks)]))
    result = {"cls": args.cls, "voxels": n, "hull_components": int(count),
              "largest_component_share": round(float(sizes.max() / sizes.sum()), 3),
              "hull_held_out_iou": round(held(grid[occupied]), 4),
              "largest_component_held_out_iou": round(held(grid[largest]), 4),
              "mask_components": [int(ndimage.label(m)[1]) for m in target.masks]}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
