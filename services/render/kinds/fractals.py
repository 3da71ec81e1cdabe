"""fractal2d samples: FractalDB instances (weight variants x flips x drawings) of meshgen's IFS classes."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np

from services.common.manifest import verify_bytes
from services.common.seeds import derive_seed
from services.meshgen.api import ifs_key, ifs_variants
from services.render.keys import sample_key
from services.render.kinds.registry import DatasetContext, Sample, sample_writer
from services.render.plan import ShardTask, fractal_view, layout
from services.render.renderers.fractal import draw_fractal_records, fractal_device
from services.render.codec import encode_png, encode_rgb


FRACTAL_BATCH = 32


def load_ifs(ctx: DatasetContext, class_index: int) -> dict:
    key = ifs_key(ctx.mesh_dataset_id, class_index)
    cache = ctx._cache.setdefault("ifs", {})
    if key not in cache:
        entry = ctx.upstream_entry(key)
        cache[key] = json.loads(verify_bytes(entry, ctx.store.get_bytes(key)))
    return cache[key]


def ifs_instance_maps(ifs: dict, instance: int, weight_step: float) -> np.ndarray:
    """(n, 6) maps of one instance: meshgen's FractalDB weight variants (``ifs_variants``) of the class's maps."""
    variants = ifs_variants(np.asarray(ifs["maps"], dtype=float), weight_step)
    if not 0 <= instance < len(variants):
        raise ValueError(f"instance {instance} out of range: the class has {len(variants)} variants")
    return np.asarray(variants[instance], dtype=float)


def fractal_records(ctx: DatasetContext, task: ShardTask) -> list[dict]:
    lay = layout(ctx.dataset)
    fr = ctx.dataset.fractal_render
    records = []
    for index in range(task.start, task.stop):
        cls, instance, slot = lay.sample(task.split, index)
        flip, drawing = fractal_view(ctx.dataset, task.split, slot)
        ifs = load_ifs(ctx, cls)
        maps = ifs_instance_maps(ifs, instance, ctx.dataset.family.weight_step)
        records.append({
            "kind": "fractal", "dataset_id": ctx.dataset_id, "class_index": cls, "instance": instance, "view": slot,
            "flip": flip, "drawing": drawing,
            "seed": derive_seed(ctx.root_seed, ctx.dataset_id, cls, instance, slot),
            "image_size": fr.image_size, "points": fr.points, "patch": fr.patch, "pad": fr.pad,
            "maps": maps.tolist(), "probs": list(ifs["probs"]), "ifs_key": ifs_key(ctx.mesh_dataset_id, cls),
        })
    return records


@sample_writer("fractal2d")
def fractal_samples(ctx: DatasetContext, task: ShardTask) -> Iterator[Sample]:
    records = fractal_records(ctx, task)
    settings = ctx.dataset.fractal_render
    device = fractal_device(settings.device)
    for start in range(0, len(records), FRACTAL_BATCH):
        batch = records[start:start + FRACTAL_BATCH]
        for record, image in zip(batch, draw_fractal_records(batch, device)):
            cls = record["class_index"]
            rgb_name, rgb = encode_rgb(np.repeat(image[..., None], 3, axis=2), settings.rgb_format)
            files = {rgb_name: rgb}
            if "seg" in settings.outputs:
                files["seg.png"] = encode_png(np.where(image > 0, np.uint16(cls + 1), np.uint16(0)).astype(np.uint16))
            files["json"] = json.dumps(record, sort_keys=True).encode("utf-8")
            files["cls"] = str(cls).encode("ascii")
            yield sample_key(cls, record["instance"], record["view"]), files
