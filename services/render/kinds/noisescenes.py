"""noisescenes samples: noise-textured ellipsoid scenes with their label maps (made by render alone)."""

from __future__ import annotations

import json
from collections.abc import Iterator

from services.render.keys import sample_key
from services.render.kinds.registry import DatasetContext, Sample, sample_writer
from services.render.plan import ShardTask, layout
from services.render.renderers.scenes import dominant_class, draw_scene, sample_scene
from services.render.codec import encode_png, encode_rgb


@sample_writer("noisescenes")
def noise_scene_samples(ctx: DatasetContext, task: ShardTask) -> Iterator[Sample]:
    lay = layout(ctx.dataset)
    for index in range(task.start, task.stop):
        _, _, scene = lay.sample(task.split, index)
        record = sample_scene(ctx.dataset.family, ctx.dataset.classes, root_seed=ctx.root_seed,
                              dataset_id=ctx.dataset_id, scene=scene)
        rgb, labels = draw_scene(record)
        cls = dominant_class(labels)
        record["class_index"] = cls
        rgb_name, rgb_bytes = encode_rgb(rgb, ctx.dataset.family.rgb_format)
        files = {rgb_name: rgb_bytes}
        if "seg" in ctx.dataset.family.outputs:
            files["seg.png"] = encode_png(labels)
        files["json"] = json.dumps(record, sort_keys=True).encode("utf-8")
        files["cls"] = str(cls).encode("ascii")
        yield sample_key(cls, 0, scene), files
