"""Training-loader throughput on one core: shards from a local store vs torchvision ImageFolder.

Both sides decode the same PNG images (224×224 by default, the render default) and
apply the same FractalDB-style augmentation — random resized crop (scale 0.5–1,
ratio 3/4–4/3) to 224×224 plus a random horizontal flip — in this process
(``workers=0``, torch limited to one thread), so the figures are per core.

- ``samples_per_s``: :class:`services.train.data.ShardStream` over WebDataset shards in
  the render contract layout (rgb.png, depth.npy, seg.png, mask.png, json, cls per
  sample), streamed and checksum-verified, shuffle buffer 1000, output (224, 224, 3)
  uint8 tensors (normalisation happens later on the whole batch, on the device).
- ``imagefolder_samples_per_s``: ``torchvision.datasets.ImageFolder`` over the same
  images as PNG files, in a shuffled order, with torchvision's reference
  classification recipe (``RandomResizedCrop`` (antialiased), ``RandomHorizontalFlip``,
  ``PILToTensor``, ``ToDtype(float32, scale=True)``, ``Normalize``).
- ``imagefolder_uint8_samples_per_s``: the same without the float conversion and
  normalisation (output uint8 like ours): the stricter baseline, also reported.
- ``ratio_vs_imagefolder`` = samples_per_s / imagefolder_samples_per_s (and
  ``ratio_vs_imagefolder_uint8``).

The images are drawn here (smoothly shaded shapes on a gradient background, like the
OSMesa renders; no per-pixel noise), so the benchmark needs no other stage.
Prints readable lines, then LAST one JSON line of medians over ``--repeats`` runs.
Targets (issue 5): >= 800 samples/s per core and >= 1.5× ImageFolder.

Run: ``.venv/bin/python benchmarks/loader.py [--images 600] [--repeats 3] [--size 224]``
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one core: set before numpy/torch load their thread pools

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.common.manifest import Manifest, put_with_entry, write_manifest  # noqa: E402
from services.common.seeds import derive_rng  # noqa: E402
from services.common.spec.train import AugmentSpec  # noqa: E402
from services.common.store import LocalStore  # noqa: E402
from services.train.data import ShardStream, dataset_shards  # noqa: E402

DATASET_ID = "bench-0000000000"
CLASSES = 10


def rendered_like(class_index: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(size, size, 3) uint8 image of a Lambert-shaded sphere-ish blob, and its mask."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    background = np.stack([0.25 + 0.2 * yy, 0.3 + 0.1 * xx, 0.35 + 0.0 * xx], axis=-1)
    cx, cy = rng.uniform(0.3, 0.7, 2)
    radius = rng.uniform(0.15, 0.3)
    stretch = 1 + (class_index % 3) * 0.4
    d2 = ((xx - cx) * stretch) ** 2 + (yy - cy) ** 2
    mask = d2 < radius**2
    nz = np.sqrt(np.clip(1 - d2 / radius**2, 0, 1))
    light = np.clip(0.6 * nz + 0.4 * ((cx - xx) + (cy - yy)) / radius * 0.5 + 0.2, 0, 1)
    albedo = np.array(derive_rng(0, "albedo", class_index).uniform(0.2, 1.0, 3), dtype=np.float32)
    image = np.where(mask[..., None], light[..., None] * albedo, background)
    return (image * 255).round().astype(np.uint8), mask


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_data(root: Path, images: int, size: int) -> tuple[LocalStore, Path]:
    """Shards (1000 samples each) in a store, and the same rgb PNGs as an ImageFolder tree."""
    store = LocalStore(root / "store")
    folder = root / "folder"
    manifest = Manifest(kind="dataset", metadata={"family": "bench", "dataset": "bench", "classes": CLASSES,
                                                  "image_size": size, "splits": {"train": images}})
    samples = []
    for i in range(images):
        c = i % CLASSES
        rng = derive_rng(0, "bench", i)
        rgb, mask = rendered_like(c, size, rng)
        depth = np.where(mask, 2.0, np.inf).astype(np.float32)
        depth_buffer = io.BytesIO()
        np.save(depth_buffer, depth)
        key = f"{c:05d}_0_{i:05d}"
        samples.append((key, {"rgb.png": png_bytes(rgb), "depth.npy": depth_buffer.getvalue(),
                              "seg.png": png_bytes(mask.astype(np.uint16) * (c + 1)),
                              "mask.png": png_bytes(mask.astype(np.uint8) * 255),
                              "json": json.dumps({"class_index": c, "view": i}).encode(), "cls": str(c).encode()}))
        (folder / f"{c:05d}").mkdir(parents=True, exist_ok=True)
        (folder / f"{c:05d}" / f"{key}.png").write_bytes(samples[-1][1]["rgb.png"])
    order = derive_rng(0, "bench-order").permutation(images)
    for shard, start in enumerate(range(0, images, 1000)):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for i in order[start:start + 1000]:
                key, members = samples[i]
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        shard_key = f"datasets/{DATASET_ID}/train-{shard:05d}.tar"
        manifest.upsert(put_with_entry(store, shard_key, buffer.getvalue(), split="train", shard=shard,
                                       samples=len(order[start:start + 1000])))
    write_manifest(store, f"datasets/{DATASET_ID}/manifest.json", manifest)
    return store, folder


def time_shards(store: LocalStore, size: int, epoch: int) -> float:
    shards = dataset_shards(store, DATASET_ID, "train")
    stream = ShardStream(store.url, shards, [np.arange(CLASSES)], input_size=size, augment=AugmentSpec(),
                         shuffle_buffer=1000, seed=0, epoch=epoch)
    start = time.perf_counter()
    count = sum(1 for _sample in stream)
    return count / (time.perf_counter() - start)


def time_imagefolder(folder: Path, size: int, epoch: int, *, to_float: bool) -> float:
    from torchvision import datasets
    from torchvision.transforms import v2

    steps = [v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True), v2.RandomHorizontalFlip(), v2.PILToTensor()]
    if to_float:
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
    dataset = datasets.ImageFolder(str(folder), transform=v2.Compose(steps))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(epoch))
    start = time.perf_counter()
    for i in order.tolist():
        dataset[i]
    return len(dataset) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=224, help="stored image side; output is always 224")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        store, folder = write_data(Path(tmp), args.images, args.size)
        results: dict[str, list[float]] = {"shards": [], "imagefolder": [], "imagefolder_uint8": []}
        for repeat in range(args.repeats):
            results["shards"].append(time_shards(store, 224, repeat))
            results["imagefolder"].append(time_imagefolder(folder, 224, repeat, to_float=True))
            results["imagefolder_uint8"].append(time_imagefolder(folder, 224, repeat, to_float=False))
            print(f"repeat {repeat}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in results.items()), flush=True)
    median = {k: statistics.median(v) for k, v in results.items()}
    print(f"{args.images} images {args.size}px -> 224px, one core, workers=0 (in-process)")
    print(json.dumps({
        "samples_per_s": round(median["shards"], 1),
        "imagefolder_samples_per_s": round(median["imagefolder"], 1),
        "imagefolder_uint8_samples_per_s": round(median["imagefolder_uint8"], 1),
        "ratio_vs_imagefolder": round(median["shards"] / median["imagefolder"], 3),
        "ratio_vs_imagefolder_uint8": round(median["shards"] / median["imagefolder_uint8"], 3),
        "images": args.images, "stored_size": args.size, "output_size": 224, "repeats": args.repeats,
        "per_core": "workers=0, torch.set_num_threads(1), one process",
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
