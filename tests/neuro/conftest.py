"""Shared fixtures: a tiny experiment with two finished runs (random resnet18 checkpoints) and a planted benchmark."""

from __future__ import annotations

import hashlib

import pytest
import torch
import torchvision

from services.common.spec.experiment import ExperimentSpec, parse_spec
from services.common.store import LocalStore
from services.neuro.features import checkpoint_bytes, feature_cache_key
from services.neuro.scoring import checkpoint_key

TINY = {
    "name": "neuro-test",
    "datasets": [{"name": "shapes", "family": {"family": "procsynth"}}],
    "pretrain": [
        {"name": "run-a", "datasets": ["shapes"], "model": "resnet18", "input_size": 64},
        {"name": "run-b", "datasets": ["shapes"], "model": "resnet18", "input_size": 64, "seed": 1},
    ],
    "neural_data": [{"name": "planted", "kind": "planted", "stimuli": 40, "objects": 4, "neuroids": 12,
                     "repetitions": 4, "reliability": 0.8, "planted_layer": "layer2"}],
    "scoring": [{"name": "main", "runs": ["run-a", "run-b"], "benchmarks": ["planted"], "layers": ["layer1", "layer2", "layer4"],
                 "n_splits": 4, "pca_components": 50, "bootstrap": 100}],
}


def finish_run(store, spec: ExperimentSpec, run: str, seed: int) -> None:
    """Save a seeded random resnet18 (num_classes=10) in the checkpoint contract and mark the run done."""
    run_id = spec.run_id(run)
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=10)
    data = checkpoint_bytes(model, "resnet18", 10, 64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    store.put_bytes(checkpoint_key(run_id), data)
    # as the train stage writes it: done.json lists the final checkpoint's size and SHA-256
    store.put_json(f"runs/{run_id}/done.json", {"run_id": run_id, "checkpoint_size": len(data),
                                                "checkpoint_sha256": hashlib.sha256(data).hexdigest()})


@pytest.fixture
def tiny_spec() -> ExperimentSpec:
    return parse_spec(TINY)


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


@pytest.fixture
def finished_store(store, tiny_spec):
    finish_run(store, tiny_spec, "run-a", 0)
    finish_run(store, tiny_spec, "run-b", 1)
    return store


def cached_layer_features(store, record: dict, data, layer: str):
    """The features the scorer cached for a scored run's layer (global-average pooling): the reference's input."""
    import io

    import numpy as np

    key = feature_cache_key(record["checkpoint"]["sha256"], data.stimulus_set_hash(), layer, "avg", 4)
    return np.load(io.BytesIO(store.get_bytes(key)), allow_pickle=False)
