"""``flatland run`` end to end: render throughput with every core against one worker, and the store's bytes.

Prints readable lines, then LAST one JSON line:

- ``render_images_per_s_1_worker`` / ``render_images_per_s_all_workers``: ``flatland run --stage render``
  (a subprocess, as a user runs it) of a procsynth dataset at 224 x 224 with ``--workers 1`` and with
  every available core, in the same run on the same meshes; ``local_parallel_ratio`` is their ratio
  (target >= 1.8 on 2 cores). ``*_cpu_s`` is the CPU time the command and its workers used: on a
  machine that other jobs share, wall-clock speed-up is capped by the cores they leave free, while
  CPU time shows the work done. Both renders must give the same bytes (checked).
- ``bytes_per_sample``: store bytes per sample of that dataset (shard tars with their tar headers,
  plus shard indexes and part records) with the default outputs (rgb, depth, seg, mask; depth as
  16-bit millimetres); ``bytes_per_sample.<member>``: each member's mean size inside the tar.
- ``rgb.<format>.bytes`` / ``.encode_ms`` / ``.decode_ms``: the dataset's RGB images in each
  RGB format: mean size, Pillow encode time, and the training loader's decode time
  (``services.train.data.decode_image``, no augmentation, 224 output) per image on one core.

Run: ``.venv/bin/python benchmarks/e2e.py [--classes 16] [--views 40]`` (1,920 images: fixed costs, process start-up and the contact sheet, weigh less than in a tiny run)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.common.spec import parse_spec  # noqa: E402
from services.common.spec.local import available_cores  # noqa: E402


def flatland(args: list[str], env: dict) -> tuple[float, float]:
    """Run ``python -m services.cli ARGS``; return (wall seconds, CPU seconds of it and its workers)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"flatland {' '.join(args)} failed ({proc.returncode})")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=16)
    parser.add_argument("--views", type=int, default=40)
    parser.add_argument("--shard-size", type=int, default=20)
    parser.add_argument("--workers", type=int, default=available_cores(), help="the 'all cores' run")
    args = parser.parse_args()

    spec_doc = {"name": "bench-e2e", "seed": 0, "datasets": [{
        "name": "procsynth", "family": {"family": "procsynth"}, "classes": args.classes,
        "render": {"image_size": 224, "views_per_instance": args.views, "shard_size": args.shard_size}}]}
    spec = parse_spec(spec_doc)
    dataset_id = spec.dataset_id("procsynth")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYOPENGL_PLATFORM": os.environ.get("PYOPENGL_PLATFORM", "osmesa")}
    work = Path(tempfile.mkdtemp(prefix="flatland-bench-e2e-"))
    try:
        spec_path = work / "spec.yaml"
        spec_path.write_text(yaml.safe_dump(spec_doc))
        store = work / "store"
        common = ["run", str(spec_path), "--store", str(store)]
        flatland([*common, "--stage", "meshgen"], env)
        results, stored = {}, {}
        for label, workers in (("1_worker", 1), ("all_workers", args.workers)):
            shutil.rmtree(store / "datasets", ignore_errors=True)
            wall, cpu = flatland([*common, "--stage", "render", "--workers", str(workers)], env)
            manifest = json.loads((store / "datasets" / dataset_id / "manifest.json").read_text())
            samples = sum(e["samples"] for e in manifest["entries"])
            results[label] = (samples / wall, wall, cpu)
            stored[label] = {p.name: p.read_bytes() for p in (store / "datasets" / dataset_id).glob("*.tar")}
            print(f"render, {workers} worker(s): {samples} images in {wall:.1f} s = {samples / wall:.1f} images/s "
                  f"(CPU {cpu:.1f} s)", flush=True)
        if stored["1_worker"] != stored["all_workers"]:
            raise SystemExit("the 1-worker and all-worker renders differ")
        ratio = results["all_workers"][0] / results["1_worker"][0]
        print(f"local_parallel_ratio {ratio:.2f} with {args.workers} workers on {available_cores()} cores", flush=True)

        folder = store / "datasets" / dataset_id
        store_bytes = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name not in
                          ("manifest.json", "contact-sheet.png"))
        bytes_per_sample = store_bytes / samples
        per_member: dict[str, list[int]] = {}
        rgb_images = []
        for path in sorted(folder.glob("*.tar")):
            for name, data in tar_members(path).items():
                per_member.setdefault(name.split(".", 1)[1], []).append(len(data))
                if name.endswith(".rgb.png"):
                    rgb_images.append(data)
        members = {k: round(statistics.mean(v)) for k, v in sorted(per_member.items())}
        print(f"bytes_per_sample {bytes_per_sample / 1000:.1f} KB; members: "
              + ", ".join(f"{k} {v / 1000:.1f} KB" for k, v in members.items()), flush=True)

        torch_threads = _rgb_formats(rgb_images[:200])
        figures = {
            "image_size": 224, "images": samples, "workers": args.workers, "cores": available_cores(),
            "render_images_per_s_1_worker": round(results["1_worker"][0], 2),
            "render_images_per_s_all_workers": round(results["all_workers"][0], 2),
            "render_wall_s_1_worker": round(results["1_worker"][1], 2),
            "render_wall_s_all_workers": round(results["all_workers"][1], 2),
            "render_cpu_s_1_worker": round(results["1_worker"][2], 2),
            "render_cpu_s_all_workers": round(results["all_workers"][2], 2),
            "local_parallel_ratio": round(ratio, 3), "target_local_parallel_ratio": 1.8,
            "bytes_per_sample": round(bytes_per_sample), "target_bytes_per_sample": 40_000,
            **{f"bytes_per_sample.{k}": v for k, v in members.items()},
            **torch_threads,
        }
        print(json.dumps(figures, sort_keys=True))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _rgb_formats(images: list[bytes]) -> dict:
    """Each RGB format's bytes, encode and loader decode time on the rendered images (one core)."""
    import torch

    from services.render.codec import decode_png, encode_rgb
    from services.train.data import decode_image

    torch.set_num_threads(1)
    arrays = [decode_png(data) for data in images]
    rng = np.random.default_rng(0)
    out = {}
    for fmt in ("png", "webp", "jpeg"):
        started = time.perf_counter()
        encoded = [encode_rgb(a, fmt)[1] for a in arrays]
        encode_s = time.perf_counter() - started
        started = time.perf_counter()
        for data in encoded:
            decode_image(data, 224, None, rng)
        decode_s = time.perf_counter() - started
        size = statistics.mean(len(d) for d in encoded)
        out.update({f"rgb.{fmt}.bytes": round(size), f"rgb.{fmt}.encode_ms": round(1000 * encode_s / len(arrays), 3),
                    f"rgb.{fmt}.decode_ms": round(1000 * decode_s / len(arrays), 3)})
        print(f"rgb {fmt}: {size / 1000:.1f} KB, encode {1000 * encode_s / len(arrays):.2f} ms, "
              f"loader decode {1000 * decode_s / len(arrays):.2f} ms per image", flush=True)
    return out


if __name__ == "__main__":
    main()
