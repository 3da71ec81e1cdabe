"""The planted benchmark: the scorer recovers the planted layer and reliability (SYNTHETIC data)."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.spec.neuro import NeuralDataSpec, ScoringSpec
from services.neuro.dataformat import neural_data_bytes, read_neural_data
from services.neuro.features import checkpoint_from_bytes
from services.neuro.planted import ensure_planted, generate_planted, generate_stimuli, planted_checkpoint, planted_key
from services.neuro.scoring import score_checkpoint

LAYERS = ["layer1", "layer2", "layer3", "layer4"]


@pytest.mark.parametrize("planted_layer, seed", [("layer2", 0), ("layer3", 1)])
def test_scorer_ranks_planted_layer_first_and_ceiling_matches(store, planted_layer, seed):
    neural = NeuralDataSpec(name="planted", kind="planted", stimuli=120, objects=6, neuroids=32, repetitions=4,
                            reliability=0.8, planted_layer=planted_layer, seed=seed)
    data = read_neural_data(store.get_bytes(ensure_planted(store, neural)))
    assert data.synthetic and "SYNTHETIC" in data.description
    checkpoint = checkpoint_from_bytes(planted_checkpoint(neural), "planted")
    scoring = ScoringSpec(name="s", runs=["x"], benchmarks=["planted"], layers=LAYERS, n_splits=5,
                          bootstrap=0)
    result, _ = score_checkpoint(store, checkpoint, data, scoring)
    raw = {layer: s["raw"] for layer, s in result["predictivity"]["planted"].items()}
    assert result["best_layer"]["planted"] == planted_layer, raw
    assert abs(result["ceiling"]["planted"]["median"] - neural.reliability) < 0.05
    # A perfect model's r is bounded by sqrt(reliability); the planted layer gets near it.
    assert raw[planted_layer] <= np.sqrt(neural.reliability) + 0.05


def test_planted_is_deterministic_and_keyed_by_spec():
    a = NeuralDataSpec(name="p", kind="planted", stimuli=20, objects=4, neuroids=6)
    b = NeuralDataSpec(name="p", kind="planted", stimuli=20, objects=4, neuroids=6, seed=1)
    first, again, other = generate_planted(a), generate_planted(a), generate_planted(b)
    np.testing.assert_array_equal(first.responses, again.responses)
    np.testing.assert_array_equal(first.images, again.images)
    assert neural_data_bytes(first) == neural_data_bytes(again)  # same seed, same file bytes
    assert not np.array_equal(first.responses, other.responses)
    assert planted_key(a) != planted_key(b) and planted_key(a).startswith("neural/p-")


def test_stimuli_differ_by_object():
    images, objects = generate_stimuli(40, 4, 32, seed=0)
    assert images.shape == (40, 32, 32, 3) and images.dtype == np.uint8
    assert sorted(set(objects)) == [f"object-{k:03d}" for k in range(4)]
    means = np.stack([images[objects == o].reshape(-1, 3).mean(0) for o in sorted(set(objects))])
    assert np.ptp(means, axis=0).max() > 5  # objects have their own colours
