"""The loader against real shards from the render stage (fractal2d, small): the contract holds."""

from __future__ import annotations

import re

import numpy as np
import pytest

from services.common.spec.experiment import parse_spec
from services.train.data import ShardStream, dataset_manifest, dataset_shards
from services.train.loop import pretrain


@pytest.mark.slow
def test_rendered_fractal_shards_stream_and_train(local_store):
    meshgen_job = pytest.importorskip("services.meshgen.job")
    render_job = pytest.importorskip("services.render.job")
    spec = parse_spec({
        "name": "contract",
        "datasets": [{"name": "fr", "family": {"family": "fractal2d"}, "classes": 2, "instances_per_class": 3,
                      "fractal_render": {"image_size": 24, "points": 20000, "drawings_per_variant": 10}}],
        "pretrain": [{"name": "r", "datasets": ["fr"], "model": "resnet18", "input_size": 16, "epochs": 1,
                      "batch_size": 16, "workers": 0}],
    })
    meshgen_job.run_job(spec, local_store)
    render_job.run_job(spec, local_store)
    dataset_id = spec.dataset_id("fr")
    manifest = dataset_manifest(local_store, dataset_id)
    splits = manifest.metadata["splits"]
    for split in ("train", "val"):
        shards = dataset_shards(local_store, dataset_id, split)
        samples = list(ShardStream(local_store.url, shards, [np.arange(2)], input_size=16, augment=None))
        assert len(samples) == splits[split] > 0
        for sample in samples:
            key = sample["key"].split("#")[1]
            assert re.fullmatch(r"\d{5}_\d+_\d{5}", key)
            assert sample["label"] == int(key[:5])  # cls agrees with the key's class
        assert sum(s["corrupt"] for s in samples) == 0
        assert {s["label"] for s in samples} == {0, 1}
    summary = pretrain(spec, "r", local_store)
    assert summary["finished"] and summary["final"]["val_samples"] == splits["val"]
