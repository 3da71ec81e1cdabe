"""render throughput on one core.

Prints readable lines, then LAST one JSON line with medians over repeats:

- ``procsynth_images_per_s``: 224x224 views of default procsynth meshes (made with
  ``services.meshgen``), RGB + depth + segmentation + mask encoded and written into a
  WebDataset tar, through the shard writer's path (one renderer and scene per worker,
  each mesh uploaded once, camera and lights changed per view);
- ``naive_images_per_s``: the same images with a new renderer (OpenGL context) and
  scene for every image, measured in the same run; ``ratio_vs_naive``;
- ``procsynth_culled_images_per_s``: as procsynth with ``material.double_sided: false``
  (back-face culling; not the default, see MaterialSpec);
- ``fractal2d_images_per_s``: 256x256 FractalDB images with 100k chaos-game points
  (drawing only, batches of 32); ``fractal2d_encoded_images_per_s`` includes PNG encoding;
- ``noisescenes_images_per_s``: 512x512 noise scenes of the published generator (1-20 ellipsoids,
  3D surface noise), half Perlin and half sparse convolution as the published study, drawn by the
  dataset's own sample writer (``services.render.kinds.noisescenes``) with RGB PNG, label-map PNG
  and record, written into a WebDataset tar; ``noisescenes_perlin_images_per_s`` and
  ``noisescenes_sparse_images_per_s`` per kind, ``noisescenes_jpeg_images_per_s`` with
  ``rgb_format: jpeg``, ``noisescenes_draw_images_per_s`` drawing only. Baseline: the
  published pipeline (WebGL driven by Selenium) made 40,000 images in about 5 hours, 2.2 images/s
  (``noisescenes_ratio_vs_published``).

``*_per_cpu_s`` divide by this process's CPU time instead of wall time: what one core does
when other jobs share the machine. Targets (issue 4): procsynth >= 60/s, fractal2d >= 200/s per core;
(issue 16) noisescenes >= 50/s per core.
Run: ``.venv/bin/python benchmarks/render.py [--repeats 3] [--images 300] [--backend egl]``
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one core: set before numpy loads BLAS
os.environ.setdefault("LP_NUM_THREADS", "0")  # llvmpipe (OSMesa): rasterise in the calling thread (one core)

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from services.common.seeds import derive_seed  # noqa: E402
from services.common.spec.meshgen import ProcSynthParams  # noqa: E402
from services.common.spec.render import RenderSettings  # noqa: E402
from services.render.renderers.fractal import default_probs, draw_fractals  # noqa: E402
from services.render.renderers.gl import SceneRenderer, mesh_frame  # noqa: E402
from services.render.sampling import sample_view  # noqa: E402
from services.render.keys import sample_key  # noqa: E402
from services.render.output import DeterministicTarWriter  # noqa: E402
from services.render.views import encode_png, encode_view, load_glb  # noqa: E402


class Clock:
    """Wall time and this process's CPU time: on a shared machine the CPU rate shows what one
    uncontended core does (everything runs in this thread: LP_NUM_THREADS=0, BLAS threads 1)."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def rates(self, n: int) -> tuple[float, float]:
        return n / (time.perf_counter() - self.wall), n / (time.process_time() - self.cpu)


def procsynth_meshes(count: int) -> list:
    """Default procsynth meshes from meshgen (base shape + stretch variants of a few classes)."""
    from services.meshgen.registry import get_family

    family = get_family("procsynth")
    params = ProcSynthParams()
    meshes = []
    for cls in range(count):
        item = family.generate_item(params, 0, cls, cls % params.meshes_per_class)
        meshes.append(load_glb(item.data))
    return meshes


def records_for(meshes, settings, views_per_mesh):
    out = []
    for cls, mesh in enumerate(meshes):
        centre, radius = mesh_frame(mesh)
        out.append([sample_view(settings, root_seed=0, dataset_id="bench", class_index=cls, instance=0, view=v,
                                mesh_centre=centre, mesh_radius=radius) for v in range(views_per_mesh)])
    return out


def pooled(meshes, records, renderer) -> float:
    """Images/s: one renderer, each mesh uploaded once, views written into a tar."""
    n = 0
    buffer = io.BytesIO()
    tar = DeterministicTarWriter(buffer)
    clock = Clock()
    for cls, (mesh, views) in enumerate(zip(meshes, records)):
        renderer.set_mesh(mesh, views[0]["material"], token=("bench", cls, time.perf_counter()))
        for record in views:
            view = renderer.render(record)
            tar.write(sample_key(cls, 0, record["view"]), encode_view(view, cls, json.dumps(record).encode()))
            n += 1
    tar.close()
    return clock.rates(n)


def naive(meshes, records, per_mesh: int, backend: str) -> float:
    """Images/s: a new renderer (context) and scene for every image."""
    n = 0
    buffer = io.BytesIO()
    tar = DeterministicTarWriter(buffer)
    clock = Clock()
    for cls, (mesh, views) in enumerate(zip(meshes, records)):
        for record in views[:per_mesh]:
            renderer = SceneRenderer(record["image_size"], backend)
            renderer.set_mesh(mesh, record["material"])
            view = renderer.render(record)
            renderer.close()
            tar.write(sample_key(cls, 0, record["view"]), encode_view(view, cls, json.dumps(record).encode()))
            n += 1
    tar.close()
    return clock.rates(n)


def fractal_rate(images: int, encode: bool) -> float:
    rng = np.random.Generator(np.random.PCG64(derive_seed(0, "bench-fractal")))
    systems = []
    for _ in range(images):
        maps = rng.uniform(-1, 1, (int(rng.integers(2, 5)), 6))
        # keep the maps contractive-ish, as filling-rate-searched FractalDB systems are
        maps[:, :4] *= 0.7
        systems.append((maps, default_probs(maps)))
    clock = Clock()
    for first in range(0, images, 32):
        batch = draw_fractals(systems[first:first + 32], list(range(first, min(first + 32, images))),
                              image_size=256, points=100_000)
        if encode:
            for image in batch:
                encode_png(np.repeat(image[..., None], 3, axis=2))
    return clock.rates(images)


#: The published noise-scene pipeline: 40,000 images in about 5 hours (WebGL in a browser driven by Selenium).
PUBLISHED_NOISESCENES_IMAGES_PER_S = 40_000 / (5 * 3600)


def noisescene_context(kind: str, rgb_format: str = "png", scenes: int = 100_000):
    from services.common.spec import parse_spec
    from services.common.store import open_store
    from services.render.kinds.registry import DatasetContext

    spec = parse_spec({"name": "bench", "seed": 0, "datasets": [
        {"name": "noise", "classes": 3, "family": {"family": "noisescenes", "noise": kind, "image_size": 512,
                                                   "scenes": scenes, "rgb_format": rgb_format}}]})
    dataset = spec.datasets[0]
    return DatasetContext(spec=spec, dataset=dataset, dataset_id=spec.dataset_id("noise"),
                          mesh_dataset_id=spec.dataset_id("noise"), root_seed=0, store=open_store(tempfile.gettempdir()))  # the writer reads no store


def noisescene_rate(kind: str, images: int, first: int, rgb_format: str = "png", encode: bool = True) -> tuple[float, float]:
    """Images/s of 512x512 noise scenes through the dataset's sample writer into a tar (or drawing only)."""
    from services.render.kinds.noisescenes import noise_scene_samples
    from services.render.plan import ShardTask
    from services.render.renderers.scenes import draw_scene, sample_scene

    ctx = noisescene_context(kind, rgb_format)
    buffer = io.BytesIO()
    tar = DeterministicTarWriter(buffer)
    clock = Clock()
    if encode:
        for key, files in noise_scene_samples(ctx, ShardTask("noise", "train", 0, first, first + images)):
            tar.write(key, files)
    else:
        for scene in range(first, first + images):
            draw_scene(sample_scene(ctx.dataset.family, 3, root_seed=0, dataset_id=ctx.dataset_id, scene=scene))
    tar.close()
    return clock.rates(images)


def noisescene_bytes(scenes: int) -> dict:
    """Mean stored bytes of each member of a 512x512 noise scene as the sample writer makes it (as many Perlin as
    sparse-convolution scenes): ``flatland plan`` sizes noise datasets from these (their textures compress far
    less than procsynth renders)."""
    from services.render.kinds.noisescenes import noise_scene_samples
    from services.render.plan import ShardTask

    sizes: dict[str, list[int]] = {}
    for kind in ("perlin", "sparse_convolution"):
        for _, files in noise_scene_samples(noisescene_context(kind), ShardTask("noise", "train", 0, 0, scenes)):
            for name, data in files.items():
                sizes.setdefault(name, []).append(len(data))
    return {f"noisescenes_bytes_per_sample.{name}": round(statistics.mean(v)) for name, v in sorted(sizes.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=300, help="pooled images per repeat")
    parser.add_argument("--naive-images", type=int, default=30)
    parser.add_argument("--fractal-images", type=int, default=128)
    parser.add_argument("--noise-images", type=int, default=40, help="noise scenes per kind and repeat")
    parser.add_argument("--only-noisescenes", action="store_true", help="measure the noise scenes only")
    parser.add_argument("--backend", choices=("osmesa", "egl"), default="osmesa",
                        help="OpenGL platform (egl on a GPU machine: the EGL figure of the issue)")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, really
    noise = noisescenes(args)
    if args.only_noisescenes:
        print(json.dumps(noise))
        return
    settings = RenderSettings(image_size=224)
    meshes = procsynth_meshes(10)
    per_mesh = max(1, args.images // len(meshes))
    records = records_for(meshes, settings, per_mesh)
    faces = [len(m.faces) for m in meshes]
    print(f"procsynth meshes from services.meshgen (defaults): {len(meshes)}, faces median {int(np.median(faces))}")
    renderer = SceneRenderer(224, args.backend)
    print(f"OpenGL: {renderer.gl_renderer} (platform {renderer.platform}, software: {renderer.software})")
    pooled(meshes[:1], [records[0][:5]], renderer)  # warm-up: shader compilation
    culled = [[dict(r, material=dict(r["material"], double_sided=False)) for r in views] for views in records]
    results = {"procsynth": [], "culled": [], "naive": [], "fractal": [], "fractal_encoded": []}
    for repeat in range(args.repeats):
        results["procsynth"].append(pooled(meshes, records, renderer))
        results["culled"].append(pooled(meshes, culled, renderer))
        results["naive"].append(naive(meshes, records, max(1, args.naive_images // len(meshes)), args.backend))
        results["fractal"].append(fractal_rate(args.fractal_images, encode=False))
        results["fractal_encoded"].append(fractal_rate(args.fractal_images // 2, encode=True))
        print(f"repeat {repeat}: " + ", ".join(f"{k} {v[-1][0]:.1f}/s ({v[-1][1]:.1f}/cpu-s)"
                                               for k, v in results.items()))
    medians = {k: statistics.median(r[0] for r in v) for k, v in results.items()}
    cpu = {k: statistics.median(r[1] for r in v) for k, v in results.items()}
    print(json.dumps({
        "procsynth_images_per_s": round(medians["procsynth"], 1),
        "procsynth_culled_images_per_s": round(medians["culled"], 1),
        "naive_images_per_s": round(medians["naive"], 1),
        "ratio_vs_naive": round(medians["procsynth"] / medians["naive"], 1),
        "fractal2d_images_per_s": round(medians["fractal"], 1),
        "fractal2d_encoded_images_per_s": round(medians["fractal_encoded"], 1),
        "procsynth_images_per_cpu_s": round(cpu["procsynth"], 1),
        "naive_images_per_cpu_s": round(cpu["naive"], 1),
        "fractal2d_images_per_cpu_s": round(cpu["fractal"], 1),
        "gl_platform": renderer.platform, "gl_renderer": renderer.gl_renderer,
        "image_size": 224, "fractal_image_size": 256, "fractal_points": 100_000, "cores": 1,
        "meshes": "services.meshgen procsynth defaults",
        **noise,
    }))


def noisescenes(args) -> dict:
    """Median rates of 512x512 noise scenes (see the module docstring)."""
    for kind in ("perlin", "sparse_convolution"):
        noisescene_rate(kind, 2, 0)  # warm-up: numba loads (or compiles) the kernel for each noise kind
    results = {"perlin": [], "sparse": [], "jpeg": [], "draw": []}
    for repeat in range(args.repeats):
        first = 1000 * repeat  # other scenes each repeat
        results["perlin"].append(noisescene_rate("perlin", args.noise_images, first))
        results["sparse"].append(noisescene_rate("sparse_convolution", args.noise_images, first))
        jpeg = [noisescene_rate(k, args.noise_images // 2, first, "jpeg") for k in ("perlin", "sparse_convolution")]
        results["jpeg"].append(tuple(2 / (1 / a + 1 / b) for a, b in zip(*jpeg)))
        draw = [noisescene_rate(k, args.noise_images // 2, first, encode=False) for k in ("perlin", "sparse_convolution")]
        results["draw"].append(tuple(2 / (1 / a + 1 / b) for a, b in zip(*draw)))
        print(f"repeat {repeat}: noisescenes " + ", ".join(f"{k} {v[-1][0]:.1f}/s ({v[-1][1]:.1f}/cpu-s)"
                                                       for k, v in results.items()))
    wall = {k: statistics.median(r[0] for r in v) for k, v in results.items()}
    cpu = {k: statistics.median(r[1] for r in v) for k, v in results.items()}
    # the study renders as many scenes of each kind: its rate is the harmonic mean of the two
    mixed, mixed_cpu = (2 / (1 / d["perlin"] + 1 / d["sparse"]) for d in (wall, cpu))
    return {
        "noisescenes_images_per_s": round(mixed, 1),
        "noisescenes_images_per_cpu_s": round(mixed_cpu, 1),
        "noisescenes_perlin_images_per_s": round(wall["perlin"], 1),
        "noisescenes_sparse_images_per_s": round(wall["sparse"], 1),
        "noisescenes_perlin_images_per_cpu_s": round(cpu["perlin"], 1),
        "noisescenes_sparse_images_per_cpu_s": round(cpu["sparse"], 1),
        "noisescenes_jpeg_images_per_s": round(wall["jpeg"], 1),
        "noisescenes_jpeg_images_per_cpu_s": round(cpu["jpeg"], 1),
        "noisescenes_draw_images_per_cpu_s": round(cpu["draw"], 1),
        "noisescenes_ratio_vs_published": round(mixed / PUBLISHED_NOISESCENES_IMAGES_PER_S, 1),
        "noisescenes_image_size": 512,
        **noisescene_bytes(max(4, args.noise_images // 2)),
    }


if __name__ == "__main__":
    main()
