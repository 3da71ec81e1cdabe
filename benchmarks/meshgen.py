"""meshgen throughput on one core, at the family defaults.

Prints readable lines, then LAST one JSON line with medians:
``procsynth_meshes_per_s`` (base draw + stretch variants + GLB export, per mesh),
``morphsynth_instances_per_s`` (decimation of a procsynth base to <= 5000 vertices,
KL bases, GP samples and GLB export, amortised over the default 3 instances per
class; the procsynth base draw itself is timed under procsynth),
``fractal2d_classes_per_s`` (IFS search to filling rate 0.2 as FractalDB measures it: 100k points, 512 px, 6 px pad).
Targets (issue 3): procsynth >= 20, morphsynth >= 10 per core.

Run: ``.venv/bin/python benchmarks/meshgen.py [--repeats 5] [--classes 10]``
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one core: set before numpy loads BLAS

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from services.common.seeds import derive_seed  # noqa: E402
from services.common.spec.meshgen import Fractal2DParams, MorphSynthParams, ProcSynthParams  # noqa: E402
from services.meshgen.families import export_glb  # noqa: E402
from services.meshgen.fractal2d import search_ifs  # noqa: E402
from services.meshgen.morphsynth import MorphModel, decimate  # noqa: E402
from services.meshgen.procsynth import generate_base, procsynth_instance  # noqa: E402


def bench_procsynth(classes: int, repeat: int) -> tuple[float, dict]:
    params = ProcSynthParams()
    draw = export = 0.0
    meshes = 0
    faces = []
    for c in range(classes):
        seed = derive_seed(repeat, "bench-procsynth", c)
        t0 = time.perf_counter()
        base = generate_base(params, seed)
        variants = [procsynth_instance(params, base, seed, i)[0] for i in range(params.meshes_per_class)]
        t1 = time.perf_counter()
        for mesh in variants:
            export_glb(mesh)
        t2 = time.perf_counter()
        draw, export = draw + t1 - t0, export + t2 - t1
        meshes += len(variants)
        faces.append(len(base.mesh.faces))
    return meshes / (draw + export), {"draw_s": draw, "export_s": export, "median_faces": statistics.median(faces)}


def bench_morphsynth(classes: int, repeat: int) -> tuple[float, dict]:
    params = MorphSynthParams()
    bases = [generate_base(params.base, derive_seed(repeat, "bench-morph", c)).mesh for c in range(classes)]
    decim = basis = sample = 0.0
    instances = 0
    vertices = []
    for c, base in enumerate(bases):
        t0 = time.perf_counter()
        decimate(base, params.max_vertices)
        t1 = time.perf_counter()
        model = MorphModel.build(base, params, derive_seed(repeat, "bench-morph-gp", c))  # decimates again inside
        t2 = time.perf_counter()
        for k in range(3):
            mesh, _ = model.sample(params, derive_seed(repeat, "bench-morph-gp", c, k))
            export_glb(mesh)
        t3 = time.perf_counter()
        decim += t1 - t0
        basis += (t2 - t1) - (t1 - t0)  # build minus its decimation
        sample += t3 - t2
        instances += 3
        vertices.append(len(model.mesh.vertices))
    total = decim + basis + sample
    return instances / total, {
        "decimate_s": decim, "kl_basis_s": basis, "sample_export_s": sample,
        "samples_only_per_s": instances / sample, "median_vertices": statistics.median(vertices),
    }


def bench_fractal2d(classes: int, repeat: int) -> tuple[float, dict]:
    params = Fractal2DParams()
    t0 = time.perf_counter()
    rejections = [search_ifs(params, derive_seed(repeat, "bench-fractal", c)).rejections for c in range(classes)]
    elapsed = time.perf_counter() - t0
    return classes / elapsed, {"mean_systems_tried": 1 + statistics.mean(rejections),
                               "ms_per_system": 1000 * elapsed / (classes + sum(rejections))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--classes", type=int, default=10, help="classes per repeat and family")
    args = parser.parse_args()
    results = {}
    for name, bench in (("procsynth_meshes_per_s", bench_procsynth),
                        ("morphsynth_instances_per_s", bench_morphsynth),
                        ("fractal2d_classes_per_s", bench_fractal2d)):
        rates = []
        for repeat in range(args.repeats):
            rate, detail = bench(args.classes, repeat)
            rates.append(rate)
            shown = ", ".join(f"{k}={v:.3g}" for k, v in detail.items())
            print(f"{name} repeat {repeat}: {rate:.2f}/s ({shown})", flush=True)
        results[name] = round(statistics.median(rates), 3)
        print(f"{name}: median {results[name]:.2f}/s over {args.repeats} repeats of {args.classes} classes", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
