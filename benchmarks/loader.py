"""Training-loader throughput on one core: shards from a local store vs torchvision ImageFolder.

Both sides decode the same PNG images (224×224 by default, the render default) and
apply the same FractalDB-style augmentation — random resized crop (scale 0.5–1,
ratio 3/4–4/3) to 224×224 plus a random horizontal flip — in this process
(``workers=0``, torch limited to one thread), so the figures are per core.

- ``samples_per_s``: :class:`services.train.data.ShardStream` over WebDataset shards
  written as render writes them (class order, render's tar writer and shard index;
  rgb.png, depth.npy, seg.png, mask.png, json, cls per sample), read in the epoch's
  global random order by random access, each image checked against its index digest,
  output (224, 224, 3) uint8 tensors (normalisation happens later on the batch).
- ``streaming_samples_per_s``: the loader this replaced, measured here on the same shards:
  shards streamed in a shuffled order, checksum-verified, through a 1,000-sample shuffle
  buffer, same decoding (``ratio_vs_streaming`` = samples_per_s / this).
- ``batch_class_coverage``: mean distinct classes per batch over the number expected when
  a batch is drawn uniformly with replacement, for the full study's geometry
  (``experiments/beyond-flatland.yaml``: procsynth's train split as render shards it, 1000
  classes, ~1000 samples per class, its shard size; the ``r50-procsynth`` run's batch size
  and loader workers). Only the order matters, so it is computed from shard indexes laid
  out by render's own plan (image size plays no part) with the loader's own
  :func:`~services.train.data.epoch_order` and the DataLoader's per-worker batching.
  ``batch_class_coverage_mix3`` does the same for the 3-dataset mix
  (``r50-proc-morph-fractal``), with ``mix3_batch_share`` the mean share of each dataset
  per batch (Table 2's budget split evenly: 1/3 each). Target: >= 0.95.
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
from services.common.spec import load_spec  # noqa: E402
from services.common.store import LocalStore  # noqa: E402
from services.render.keys import shard_index_key  # noqa: E402
from services.render.output import DeterministicTarWriter  # noqa: E402
from services.render.plan import layout, shard_plan  # noqa: E402
from services.train.data import (  # noqa: E402
    ShardIndex, ShardStream, dataset_shards, decode_image, epoch_order, iter_shard_samples,
)
from services.train.mixes import plan_mix  # noqa: E402

FULL_SPEC = Path(__file__).resolve().parents[1] / "experiments" / "beyond-flatland.yaml"

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
    samples.sort(key=lambda sample: sample[0])  # class order, as render writes shards
    for shard, start in enumerate(range(0, images, 1000)):
        buffer = io.BytesIO()
        tar = DeterministicTarWriter(buffer)
        for key, members in samples[start:start + 1000]:
            tar.write(key, members)
        tar.close()
        shard_key = f"datasets/{DATASET_ID}/train-{shard:05d}.tar"
        entry = put_with_entry(store, shard_key, buffer.getvalue(), split="train", shard=shard,
                               samples=len(samples[start:start + 1000]))
        store.put_json(shard_index_key(shard_key), tar.shard_index(shard_key, entry.sha256))
        manifest.upsert(entry)
    write_manifest(store, f"datasets/{DATASET_ID}/manifest.json", manifest)
    return store, folder


def time_shards(store: LocalStore, size: int, epoch: int) -> float:
    shards = dataset_shards(store, DATASET_ID, "train")
    start = time.perf_counter()  # indexing the shards counts too
    stream = ShardStream(store.url, shards, [np.arange(CLASSES)], input_size=size, augment=AugmentSpec(),
                         seed=0, epoch=epoch)
    count = sum(1 for _sample in stream)
    return count / (time.perf_counter() - start)


def time_streaming(store: LocalStore, size: int, epoch: int, buffer_size: int = 1000) -> float:
    """The replaced training loader: shuffled shard order, streamed, 1000-sample shuffle buffer."""
    shards = dataset_shards(store, DATASET_ID, "train")
    rng = derive_rng(0, "data", "train", epoch)
    augment = AugmentSpec()
    start = time.perf_counter()
    buffer, count = [], 0
    for i in rng.permutation(len(shards)):
        for sample in iter_shard_samples(store, shards[i]):
            if len(buffer) < buffer_size:
                buffer.append(sample)
                continue
            slot = int(rng.integers(len(buffer)))
            buffer[slot], sample = sample, buffer[slot]
            decode_image(sample["rgb.png"], size, augment, rng)
            count += 1
    for sample in buffer:
        decode_image(sample["rgb.png"], size, augment, rng)
        count += 1
    return count / (time.perf_counter() - start)


def render_order_indexes(spec, dataset_name: str) -> list[ShardIndex]:
    """Shard indexes of a dataset's train split laid out exactly as render's plan shards it (classes only)."""
    dataset = spec.dataset(dataset_name)
    lay = layout(dataset)
    indexes = []
    for task in shard_plan(spec, dataset_name):
        if task.split != "train":
            continue
        classes = np.array([lay.sample("train", i)[0] for i in range(task.start, task.stop)], dtype=np.int64)
        n = len(classes)
        indexes.append(ShardIndex(np.zeros(n, "S1"), classes, np.zeros(n, np.int64), np.zeros(n, np.int64),
                                  np.zeros(n, "S1")))
    return indexes


def loader_batches(rows: np.ndarray, batch_size: int, workers: int) -> list[np.ndarray]:
    """The batches a DataLoader makes of one rank's rows: worker k takes every workers-th row, full batches only."""
    batches = []
    for worker in range(max(workers, 1)):
        mine = rows[worker::max(workers, 1)]
        batches += [mine[i:i + batch_size] for i in range(0, len(mine) - batch_size + 1, batch_size)]
    return batches


def expected_distinct(classes: int, batch_size: int) -> float:
    """Distinct classes in a batch drawn uniformly with replacement from ``classes`` classes."""
    return classes * (1.0 - (1.0 - 1.0 / classes) ** batch_size)


def class_coverage(spec, run_name: str, epoch: int = 0) -> dict:
    """batch_class_coverage of one pre-training run of ``spec`` (see the module docstring)."""
    run = next(r for r in spec.pretrain if r.name == run_name)
    per_dataset = {name: render_order_indexes(spec, name) for name in run.datasets}
    mix = plan_mix({name: (name, spec.dataset(name).classes) for name in run.datasets}, run)
    indexes, sources = [], []
    for source, name in enumerate(run.datasets):
        indexes += per_dataset[name]
        sources += [source] * len(per_dataset[name])
    rows = epoch_order(indexes, sources, [part.label_table() for part in mix.parts], seed=run.seed, split="train",
                       epoch=epoch)
    source_of_label = np.concatenate([np.full(len(part.classes), s) for s, part in enumerate(mix.parts)])
    batches = loader_batches(rows, run.batch_size, run.workers)
    distinct = np.mean([len(np.unique(b[:, 2])) for b in batches])
    shares = np.mean([np.bincount(source_of_label[b[:, 2]], minlength=len(mix.parts)) / len(b) for b in batches], axis=0)
    return {"coverage": float(distinct / expected_distinct(mix.num_classes, run.batch_size)),
            "distinct": float(distinct), "classes": mix.num_classes, "batches": len(batches),
            "batch_size": run.batch_size, "workers": run.workers, "shares": [round(float(x), 3) for x in shares],
            "samples": len(rows)}


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
        results: dict[str, list[float]] = {"shards": [], "streaming": [], "imagefolder": [], "imagefolder_uint8": []}
        for repeat in range(args.repeats):
            results["shards"].append(time_shards(store, 224, repeat))
            results["streaming"].append(time_streaming(store, 224, repeat))
            results["imagefolder"].append(time_imagefolder(folder, 224, repeat, to_float=True))
            results["imagefolder_uint8"].append(time_imagefolder(folder, 224, repeat, to_float=False))
            print(f"repeat {repeat}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in results.items()), flush=True)
    median = {k: statistics.median(v) for k, v in results.items()}
    print(f"{args.images} images {args.size}px -> 224px, one core, workers=0 (in-process)")
    spec = load_spec(FULL_SPEC)
    single = class_coverage(spec, "r50-procsynth")
    mix3 = class_coverage(spec, "r50-proc-morph-fractal")
    for name, c in (("r50-procsynth", single), ("r50-proc-morph-fractal", mix3)):
        print(f"{name}: {c['samples']} train samples, {c['classes']} classes, batch {c['batch_size']}, "
              f"{c['workers']} workers: {c['distinct']:.1f} distinct classes per batch "
              f"(uniform: {expected_distinct(c['classes'], c['batch_size']):.1f}), coverage {c['coverage']:.3f}, "
              f"dataset shares per batch {c['shares']}")
    print(json.dumps({
        "batch_class_coverage": round(single["coverage"], 4),
        "batch_class_coverage_mix3": round(mix3["coverage"], 4),
        "mix3_batch_share": mix3["shares"],
        "samples_per_s": round(median["shards"], 1),
        "streaming_samples_per_s": round(median["streaming"], 1),
        "ratio_vs_streaming": round(median["shards"] / median["streaming"], 3),
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
