"""Estimated cost of an experiment: images, bytes, and compute hours from measured throughput.

Throughput figures come from ``benchmarks/measured.json``, which records what the
benchmark scripts printed on a named machine (and the command that produced them).
Figures nobody has measured are reported as unmeasured, never guessed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from services.common.spec import ExperimentSpec
from services.common.spec.meshgen import MESH_KINDS
from services.experiment.workplan import sample_count, shard_counts, split_sizes

MEASURED = Path(__file__).resolve().parents[2] / "benchmarks" / "measured.json"


@dataclass
class DatasetCost:
    name: str
    family: str
    images: int
    train_images: int
    shards: int
    render_core_hours: float | None
    store_bytes: float | None = None  # from measured bytes per sample (None: nothing measured fits)


@dataclass
class RunCost:
    name: str
    model: str
    images_seen: int  # the run and its search together
    gpu_hours: float | None
    search_images: int = 0  # of which the cross-validated search (trials' training and held-out scoring)


def load_measured(path: Path = MEASURED) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _per_s(measured: dict, key: str) -> float | None:
    value = measured.get("figures", {}).get(key)
    return float(value) if value else None


def bytes_per_sample(dataset, measured: dict) -> float | None:
    """Store bytes of one sample of ``dataset``, from the bytes per member the benchmarks measured.

    Members scale with the image area (measured at ``e2e.image_size``, procsynth renders); the record
    and tar headers (512 bytes per member, padding) do not. Noise-scene datasets use the members of
    512 x 512 noise scenes ``benchmarks/render.py`` measured (``render.noisescenes_bytes_per_sample.*``:
    their textures compress far less) where present. Fractal datasets store rgb and seg only; their
    PNGs are scaled from the procsynth measurement (an estimate, said so in the plan's notes). RGB
    formats other than PNG use their measured ratio to PNG.
    """
    figures = measured.get("figures", {})
    base = figures.get("e2e.image_size")
    if not base:
        return None
    if dataset.kind in MESH_KINDS:
        settings, size = dataset.render, dataset.render.image_size
    elif dataset.kind == "fractal2d":
        settings, size = dataset.fractal_render, dataset.fractal_render.image_size
    else:
        settings, size = dataset.family, dataset.family.image_size
    prefix, record = "e2e.bytes_per_sample", figures.get("e2e.bytes_per_sample.json", 0)
    if dataset.kind == "noisescenes" and figures.get("render.noisescenes_bytes_per_sample.rgb.png"):
        prefix, base = "render.noisescenes_bytes_per_sample", figures.get("render.noisescenes_image_size", 512)
        record = figures.get(f"{prefix}.json", record)
    area = (size / base) ** 2
    member = {"rgb": "rgb.png", "depth": "depth.png", "seg": "seg.png", "mask": "mask.png"}
    total = 0.0
    for output in settings.outputs:
        value = figures.get(f"{prefix}.{member[output]}")
        if value is None:
            return None
        if output == "rgb" and settings.rgb_format != "png":
            png, other = figures.get("e2e.rgb.png.bytes"), figures.get(f"e2e.rgb.{settings.rgb_format}.bytes")
            if not (png and other):
                return None
            value = value * other / png
        total += value * area
    members = len(settings.outputs) + 2  # + json, cls
    return total + record + members * 768  # header + mean padding


def plan_experiment(spec: ExperimentSpec, measured: dict | None = None, train_images_per_s: float | None = None) -> dict:
    measured = load_measured() if measured is None else measured
    datasets = []
    for d in spec.datasets:
        images = sample_count(d)
        rate_key = {"fractal2d": "fractal2d_images_per_s", "noisescenes": "noisescenes_images_per_s"}.get(
            d.kind, "procsynth_images_per_s"
        )
        rate = _per_s(measured, rate_key)
        per_sample = bytes_per_sample(d, measured)
        datasets.append(
            DatasetCost(
                d.name, d.kind, images, split_sizes(d)["train"], sum(shard_counts(d).values()),
                images / rate / 3600 if rate else None, images * per_sample if per_sample else None,
            )
        )
    by_name = {c.name: c for c in datasets}
    gpu_rate = train_images_per_s or _per_s(measured, "resnet50_train_images_per_s_gpu")
    runs = []
    for r in spec.pretrain:
        available = sum(by_name[n].train_images for n in r.datasets)
        classes = sum(spec.dataset(n).classes for n in r.datasets)
        if r.class_budget:
            available = int(available * min(1.0, r.class_budget / classes))
        search = 0
        if r.search is not None:  # every (lr, wd) x fold trains on k-1 folds and scores the held-out one, each epoch
            pairs = len(r.search.lr) * len(r.search.weight_decay)
            search = int(pairs * r.search.folds * r.search.epochs * available * r.search.fraction)
        seen = available * r.epochs + search
        # a 3D-prior step (decoder, volume rendering, the frozen copy) costs more than a supervised one: its own
        # measured figure, or unmeasured
        rate = gpu_rate if r.task != "3d_prior" else (train_images_per_s or _per_s(measured, "prior_train_images_per_s_gpu"))
        runs.append(RunCost(r.name, r.model, seen, seen / rate / 3600 if rate else None, search))
    return {
        "experiment": spec.name,
        "datasets": datasets,
        "runs": runs,
        "total_images": sum(c.images for c in datasets),
        "store_bytes": sum(c.store_bytes for c in datasets) if datasets and all(c.store_bytes for c in datasets) else None,
        "render_core_hours": sum(c.render_core_hours or 0 for c in datasets) if all(c.render_core_hours for c in datasets) else None,
        "train_gpu_hours": sum(r.gpu_hours for r in runs) if runs and all(r.gpu_hours is not None for r in runs) else None,
        "measured_on": measured.get("machine", "nothing measured"),
    }
