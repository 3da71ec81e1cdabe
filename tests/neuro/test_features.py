"""Feature extraction from checkpoints: preprocessing, pooling, layer checks, the store cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from services.common.errors import ResourceLimitError
from services.neuro.features import (
    cached_features,
    checkpoint_bytes,
    checkpoint_from_bytes,
    extract_features,
    pool_activation,
    preprocess,
)


def _checkpoint():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    return checkpoint_from_bytes(checkpoint_bytes(model, "resnet18", 10, 32, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2)), "ck")


def test_preprocess_resizes_and_normalises():
    images = np.full((2, 48, 48, 3), 255, dtype=np.uint8)
    x = preprocess(images, 32, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2))
    assert x.shape == (2, 3, 32, 32)
    np.testing.assert_allclose(x[0, :, 0, 0].numpy(), [(1 - 0.5) / 0.2, (1 - 0.4) / 0.2, (1 - 0.3) / 0.2], rtol=1e-5)


def test_pooling_shapes():
    a = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    assert pool_activation(a, "avg").shape == (2, 3)
    assert torch.allclose(pool_activation(a, "avg"), a.mean(dim=(2, 3)))
    assert pool_activation(a, "grid", 2).shape == (2, 12)
    assert pool_activation(a, "flatten").shape == (2, 192)
    with pytest.raises(ValueError, match="pooling"):
        pool_activation(a, "max")


def test_unknown_layer_named():
    ck = _checkpoint()
    with pytest.raises(ValueError, match=r"\['layer9'\] are not nodes"):
        extract_features(ck.build(), np.zeros((1, 32, 32, 3), np.uint8), ["layer9"], input_size=32, mean=ck.mean, std=ck.std)


def test_feature_memory_cap():
    ck = _checkpoint()
    with pytest.raises(ResourceLimitError, match="use pooling 'avg' or 'grid'"):
        extract_features(ck.build(), np.zeros((4, 32, 32, 3), np.uint8), ["layer1"], input_size=32, mean=ck.mean,
                         std=ck.std, pooling="flatten", max_bytes=1000)


def test_cache_reuses_features_and_batching_is_invisible(store):
    ck = _checkpoint()
    images = np.random.default_rng(0).integers(0, 255, size=(10, 40, 40, 3), dtype=np.uint8)
    first = cached_features(store, ck, images, "a" * 64, ["layer1", "avgpool"], batch_size=3)
    keys = list(store.list("features/"))
    assert len(keys) == 2 and all(k.startswith(f"features/{ck.sha256[:16]}/aaaaaaaaaaaaaaaa/") for k in keys)
    unbatched = extract_features(ck.build(), images, ["layer1", "avgpool"], input_size=32, mean=ck.mean, std=ck.std, batch_size=10)
    np.testing.assert_allclose(first["layer1"], unbatched["layer1"], atol=1e-5)
    assert first["avgpool"].shape == (10, 512)
    # A cached read does not run the model: poison the weights, the cache still answers.
    ck.state_dict = {k: v * float("nan") if v.is_floating_point() else v for k, v in ck.state_dict.items()}
    again = cached_features(store, ck, images, "a" * 64, ["layer1", "avgpool"])
    np.testing.assert_array_equal(again["avgpool"], first["avgpool"])


def test_device_choice():
    from services.neuro.features import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device: 'cuda' requested"):
            resolve_device("cuda")
