"""Mesh fitting by differentiable rendering (issue 18), on one core.

``fit_seconds``: fit a level-4 ico-sphere (2,562 vertices) to 20 silhouettes (pyrender masks at
128 x 128, elevations 0..180, azimuths -180..180) of the default procsynth mesh (class 0), 300
iterations at the default FitParams, with the resulting silhouette IoU on 4 held-out views (target
>= 0.9), chamfer and F-score against the true mesh, and the time split between rasterisation
(forward + backward) and losses (forward + backward of everything else).

``raster_views_per_s``: the soft rasteriser alone, forward + backward, views per second: a level-4
ico-sphere seen from 20 views at 128 x 128, sigma 0.1 px^2 (the fit default) (median of ``--repeats``). Baseline: none
exists here (PyTorch3D / nvdiffrast have no build); the named reference is the same call at 1 view.

Prints readable lines, then LAST one JSON line.
Run: ``.venv/bin/python benchmarks/fit.py [--repeats 5] [--iterations 300] [--classes 1] [--set FIELD=VALUE]``
(``--set`` reproduces the variants tried for the defaults, e.g. ``--set optimizer=sgd --skip-raster``).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one core: set before numpy / torch load BLAS
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import trimesh  # noqa: E402

torch.set_num_threads(1)

from services.common.spec.meshgen import FitParams  # noqa: E402
from services.meshgen.fit import fit, orbit_angles, target_from_mesh  # noqa: E402
from services.meshgen.registry import get_family  # noqa: E402
from services.render import api as render_api  # noqa: E402


def bench_raster(views: int, repeats: int) -> float:
    sphere = trimesh.creation.icosphere(4)
    az, el = orbit_angles(views)
    records = render_api.orbit_records(az, el, image_size=128, centre=np.zeros(3), radius=1.0)
    cams = render_api.cameras_from_records(records)
    faces = torch.as_tensor(sphere.faces)
    rates = []
    for _ in range(repeats + 1):  # the first is a warm-up
        v = torch.tensor(sphere.vertices, dtype=torch.float32, requires_grad=True)
        t = time.perf_counter()
        render_api.soft_silhouette(v, faces, cams, sigma=0.1).sum().backward()
        rates.append(views / (time.perf_counter() - t))
    return statistics.median(rates[1:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--classes", type=int, default=1, help="procsynth classes fitted (class 0, 1, ...)")
    parser.add_argument("--views-per-iteration", type=int, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override one FitParams field (VALUE read as JSON when it parses), e.g. --set optimizer=sgd")
    parser.add_argument("--skip-raster", action="store_true", help="only the fit (no raster_views_per_s)")
    args = parser.parse_args()
    one = many = float("nan")
    if not args.skip_raster:
        one = bench_raster(1, args.repeats)
        many = bench_raster(20, args.repeats)
        print(f"raster_views_per_s: {many:.2f} (20 views per call), {one:.2f} (1 view per call; reference)", flush=True)
    family = get_family("procsynth")
    overrides = {"iterations": args.iterations}
    if args.views_per_iteration is not None:
        overrides["views_per_iteration"] = args.views_per_iteration
    for item in args.overrides:
        field, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected FIELD=VALUE")
        try:
            overrides[field] = json.loads(value)
        except ValueError:
            overrides[field] = value
    params = FitParams(**overrides)
    print(f"FitParams: {params.model_dump_json(exclude_defaults=True)} (the rest default)", flush=True)
    runs = []
    for cls in range(args.classes):
        mesh = family.generate_item(family.parse_params({}), 0, cls, 0).obj
        target = target_from_mesh(mesh, params)
        result = fit(target, params)
        m, t = result.metrics, result.timing
        runs.append({**m, **t})
        print(f"class {cls}: {len(mesh.faces)} target faces; fit {t['fit_seconds']:.1f} s (raster {t['raster_seconds']:.1f} s, "
              f"losses {t['loss_seconds']:.1f} s); held-out IoU {m['held_out_iou']:.3f}, train IoU {m['train_iou']:.3f}, "
              f"chamfer {m['chamfer']:.4f}, F@{m['fscore_threshold']} {m['fscore']:.3f}", flush=True)
    med = lambda key: round(statistics.median(r[key] for r in runs), 4)  # noqa: E731
    print(json.dumps({"fit_seconds": med("fit_seconds"), "fit_held_out_iou": med("held_out_iou"),
                      "fit_chamfer": med("chamfer"), "fit_fscore": med("fscore"),
                      "fit_raster_seconds": med("raster_seconds"), "fit_loss_seconds": med("loss_seconds"),
                      "raster_views_per_s": None if args.skip_raster else round(many, 3),
                      "raster_views_per_s_1view": None if args.skip_raster else round(one, 3)}))


if __name__ == "__main__":
    main()
