"""Contact sheets: a grid of a few classes (rows) and instances (columns) of each family.

Meshes are rendered with pyrender offscreen (OSMesa unless ``PYOPENGL_PLATFORM``
is already set), flat grey for procsynth and with their per-vertex albedo for
morphsynth; fractal2d classes are drawn by the chaos game. This is a quick look
at what a family makes, not the render stage.

Example::

    from services.meshgen.contact_sheet import write_family_sheet
    write_family_sheet("sheet.png", {"procsynth": ProcSynthParams(), "fractal2d": Fractal2DParams()}, seed=0)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import trimesh
from pydantic import BaseModel

from services.common.seeds import derive_rng
from services.meshgen.fractal2d import chaos_game, ifs_variants, map_probabilities
from services.meshgen.registry import get_family


def render_mesh(mesh: trimesh.Trimesh, size: int = 256, *, elevation_deg: float = 25.0, azimuth_deg: float = 35.0) -> np.ndarray:
    """A shaded view of ``mesh`` filling most of the frame.

    Returns
    -------
    image : (size, size, 3) uint8
    """
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    from services.common.glplatform import select_platform

    select_platform("auto")  # before pyrender: fixes the GL platform and library load order
    import pyrender  # imported here: it binds the GL platform at import time

    has_colours = mesh.visual.kind == "vertex"
    material = None if has_colours else pyrender.MetallicRoughnessMaterial(
        baseColorFactor=(0.75, 0.72, 0.68, 1.0), metallicFactor=0.0, roughnessFactor=0.8
    )
    scene = pyrender.Scene(bg_color=(1.0, 1.0, 1.0, 1.0), ambient_light=(0.35, 0.35, 0.35))
    scene.add(pyrender.Mesh.from_trimesh(mesh, material=material, smooth=False))
    centre = mesh.bounds.mean(axis=0)
    radius = 0.5 * float(np.linalg.norm(mesh.extents))
    yfov = np.pi / 4.0
    distance = radius / np.sin(yfov / 2.0)
    el, az = np.radians(elevation_deg), np.radians(azimuth_deg)
    direction = np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])
    eye = centre + distance * direction
    forward = (centre - eye) / np.linalg.norm(centre - eye)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, up, -forward, eye
    scene.add(pyrender.PerspectiveCamera(yfov=yfov, znear=distance * 0.05, zfar=distance * 4.0), pose=pose)
    scene.add(pyrender.DirectionalLight(color=np.ones(3), intensity=3.0), pose=pose)
    renderer = pyrender.OffscreenRenderer(size, size)
    try:
        colour, _ = renderer.render(scene)
    finally:
        renderer.delete()
    return np.ascontiguousarray(colour[:, :, :3])


def render_ifs(maps: np.ndarray, size: int = 256, *, points: int = 100_000, seed: int = 0) -> np.ndarray:
    """The attractor of an IFS as dark points on white.

    Parameters
    ----------
    maps : (n, 6) float
        Rows ``[a, b, c, d, e, f]``.

    Returns
    -------
    image : (size, size, 3) uint8
    """
    maps = np.asarray(maps, dtype=np.float64)
    xy = chaos_game(maps, map_probabilities(maps), points, derive_rng(seed, "contact-sheet", "ifs"))
    xy = xy[np.isfinite(xy).all(axis=1)]
    image = np.full((size, size, 3), 255, dtype=np.uint8)
    if len(xy) == 0:
        return image
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    pix = np.floor((xy - lo) / np.maximum(hi - lo, 1e-12) * (size * 0.9 - 1) + size * 0.05).astype(np.int64)
    image[size - 1 - pix[:, 1], pix[:, 0]] = (30, 30, 90)
    return image


def family_images(family_name: str, params: BaseModel, root_seed: int, classes: Sequence[int], instances: Sequence[int], size: int = 256) -> list[list[np.ndarray]]:
    """Images of ``instances`` of each class in ``classes``: one row per class.

    For fractal2d, "instances" index :func:`ifs_variants` (0 is the original system).
    """
    family = get_family(family_name)
    rows = []
    for class_index in classes:
        if family_name == "fractal2d":
            ifs = family.generate_class(params, root_seed, class_index, [0])[0].obj
            variants = ifs_variants(ifs.maps, params.weight_step)
            rows.append([render_ifs(variants[i % len(variants)], size, seed=ifs.seed) for i in instances])
        else:
            items = family.generate_class(params, root_seed, class_index, list(instances))
            rows.append([render_mesh(item.obj, size) for item in items])
    return rows


def write_contact_sheet(path: str | os.PathLike, sections: Mapping[str, list[list[np.ndarray]]], *, title: str = "") -> Path:
    """Write a PNG with one labelled block of rows per section (e.g. per family)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labelled = [(name, r, row) for name, rows in sections.items() for r, row in enumerate(rows)]
    columns = max(len(row) for _, _, row in labelled)
    fig, axes = plt.subplots(len(labelled), columns, figsize=(2.0 * columns, 2.0 * len(labelled)), squeeze=False)
    for (name, r, row), ax_row in zip(labelled, axes):
        for c, ax in enumerate(ax_row):
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(row):
                ax.imshow(row[c])
            else:
                ax.axis("off")
        ax_row[0].set_ylabel(f"{name}\nclass {r}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def write_family_sheet(path: str | os.PathLike, families: Mapping[str, BaseModel], *, seed: int = 0, classes: int = 3,
                       instances: int = 3, size: int = 200) -> Path:
    """Contact sheet of the first ``classes`` classes and ``instances`` instances of each family."""
    sections = {
        name: family_images(name, params, seed, range(classes), range(instances), size) for name, params in families.items()
    }
    return write_contact_sheet(path, sections, title=f"meshgen families, seed {seed}")
