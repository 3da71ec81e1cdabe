"""PCA fitted on a separate image folder; spatial features (no global pooling) by random projection or streaming PCA.

Planted cases: a linear 'network' (a 1x1 convolution that passes the normalised pixels through), so the
features are known functions of the images and the signal is placed where one method can find it and
another cannot.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from services.common.errors import ResourceLimitError, SpecError
from services.common.spec.experiment import parse_spec
from services.common.spec.neuro import ScoringSpec, SpatialReduction
from services.neuro.features import Checkpoint, extract_features, extract_spatial_features, plan_spatial
from services.neuro.predictivity import make_splits, reduce_pca, score_predictivity
from services.neuro.scoring import mapped_features, model_features, pca_fit_images, scoring_hash
from tests.neuro.conftest import TINY

SIZE = 8  # image side: 3 x 8 x 8 = 192 units


def passthrough(channels_out: int = 3) -> torch.nn.Module:
    """Layer "0": a 1x1 convolution, identity on the first three channels (features = normalised pixels)."""
    conv = torch.nn.Conv2d(3, channels_out, 1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        for c in range(min(3, channels_out)):
            conv.weight[c, c] = 1.0
    return torch.nn.Sequential(conv).eval()


class LinearCheckpoint(Checkpoint):
    def build(self) -> torch.nn.Module:
        return passthrough()


def linear_checkpoint() -> Checkpoint:
    return LinearCheckpoint(model_name="passthrough", num_classes=0, input_size=SIZE, mean=(0.0, 0.0, 0.0),
                            std=(1.0, 1.0, 1.0), state_dict={}, sha256="c" * 64, key="planted-linear")


def pattern(kind: str) -> np.ndarray:
    """A +-1 pattern over (H, W, 3): 'checker' and 'halves' are orthogonal and each has zero mean per channel."""
    y, x = np.mgrid[:SIZE, :SIZE]
    p = (np.where((x + y) % 2 == 0, 1.0, -1.0) if kind == "checker" else np.where(x < SIZE // 2, 1.0, -1.0))
    return np.repeat(p[:, :, None], 3, axis=2)


def to_images(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def write_folder(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    return folder


def test_pca_fitted_on_a_separate_folder_is_used_and_differs_from_the_stimulus_fit(tmp_path, store):
    """Planted: in the stimuli the largest variance is a direction the responses ignore ('checker', amplitude 30);
    the responses follow a weaker one ('halves', amplitude 8). The folder's images vary only along 'halves'.
    One PCA component fitted on the stimuli keeps 'checker' (no predictivity); fitted on the folder it keeps
    'halves' (high predictivity)."""
    rng = np.random.default_rng(0)
    s = 120
    z1, z2 = rng.standard_normal(s), rng.standard_normal(s)
    stimuli = to_images(128 + 30 * z1[:, None, None, None] * pattern("checker")
                        + 8 * z2[:, None, None, None] * pattern("halves") + rng.normal(0, 1, (s, SIZE, SIZE, 3)))
    w = rng.standard_normal(80)
    folder = write_folder(tmp_path / "fit", to_images(128 + 30 * w[:, None, None, None] * pattern("halves")
                                                     + rng.normal(0, 1, (80, SIZE, SIZE, 3))))
    responses = z2[:, None] * rng.uniform(0.5, 1.5, 10) + 0.3 * rng.standard_normal((s, 10))
    splits = make_splits(np.arange(s) % 4, "stratified_kfold", 5, seed=0)
    ck = linear_checkpoint()

    def scoring(**extra) -> ScoringSpec:
        return ScoringSpec(name="m", runs=["r"], benchmarks=["b"], layers=["0"], pooling="flatten",
                           pca_components=1, bootstrap=0, **extra)

    results = {}
    for label, spec in (("stimuli", scoring()), ("folder", scoring(pca_fit_images=str(folder)))):
        fit = pca_fit_images(spec, (SIZE, SIZE))
        features = model_features(store, ck, stimuli, "s" * 64, ["0"], spec, fit=fit)
        mapped = mapped_features(store, ck, features, spec, fit=fit)["0"]
        assert features["0"].shape == (s, SIZE * SIZE * 3) and mapped.shape == (s, 1)
        r = score_predictivity(mapped, responses, splits, np.ones(10), mapping="pls", n_components=1, seed=0)
        results[label] = (abs(np.corrcoef(mapped[:, 0], z1)[0, 1]), abs(np.corrcoef(mapped[:, 0], z2)[0, 1]), r.raw)
    (stim_z1, stim_z2, stim_r), (fold_z1, fold_z2, fold_r) = results["stimuli"], results["folder"]
    assert stim_z1 > 0.95 and stim_z2 < 0.3 and stim_r < 0.3, results
    assert fold_z2 > 0.95 and fold_z1 < 0.3 and fold_r > 0.8, results
    # The library call agrees: fitted on the folder's features, applied to the stimuli's.
    fit_images, _ = pca_fit_images(scoring(pca_fit_images=str(folder)), (SIZE, SIZE))
    x = extract_features(passthrough(), stimuli, ["0"], input_size=SIZE, mean=ck.mean, std=ck.std, pooling="flatten")["0"]
    f = extract_features(passthrough(), fit_images, ["0"], input_size=SIZE, mean=ck.mean, std=ck.std, pooling="flatten")["0"]
    assert abs(np.corrcoef(reduce_pca(x, 1, seed=0, fit_on=f)[:, 0], z2)[0, 1]) > 0.95


def test_scoring_a_run_uses_the_folder_and_its_content_is_part_of_the_settings(tmp_path, finished_store):
    from services.neuro.scoring import score_run

    rng = np.random.default_rng(1)
    folder = write_folder(tmp_path / "imagenet-like", rng.integers(0, 255, (20, 48, 48, 3), dtype=np.uint8))
    spec_dict = {**TINY, "scoring": [{**TINY["scoring"][0], "pca_fit_images": str(folder), "compare_models": False}]}
    spec = parse_spec(spec_dict)
    scoring = spec.scoring[0]
    record = score_run(spec, finished_store, scoring, "run-a", "planted")
    assert record["pca_fit"]["count"] == 20 and record["pca_fit"]["images"] == str(folder)
    # 20 fit images: the PCA keeps 20 components (fitted on the 40 stimuli it would keep 40, its cap pca_components 50)
    assert record["mapped_dims"] == {"layer1": 20, "layer2": 20, "layer4": 20}
    plain = parse_spec(TINY)
    assert scoring_hash(plain.scoring[0], plain.neural_data[0]) != record["settings_hash"]
    before = scoring_hash(scoring, spec.neural_data[0])
    Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(folder / "0003.png")  # an edited fit image
    assert scoring_hash(scoring, spec.neural_data[0]) != before
    with pytest.raises(ValueError, match=r"pca_fit_images: '.*missing' is not a directory"):
        pca_fit_images(scoring.model_copy(update={"pca_fit_images": str(tmp_path / "missing")}), (8, 8))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="pca_fit_images: no images"):
        pca_fit_images(scoring.model_copy(update={"pca_fit_images": str(tmp_path / "empty")}), (8, 8))


def test_random_projection_is_reproducible_by_seed_and_keeps_a_planted_spatial_signal():
    """Planted: responses follow 4 latent factors that appear as spatial patterns with zero mean per channel,
    so global average pooling erases them; a 96-d sparse random projection of all 192 units keeps them."""
    rng = np.random.default_rng(2)
    s, factors = 200, 4
    z = rng.standard_normal((s, factors))
    patterns = rng.standard_normal((factors, SIZE, SIZE, 3))
    patterns -= patterns.mean(axis=(1, 2), keepdims=True)  # zero spatial mean per channel: invisible to 'avg'
    stimuli = to_images(128 + 12 * np.einsum("sf,fhwc->shwc", z, patterns) + rng.normal(0, 2, (s, SIZE, SIZE, 3)))
    responses = z @ rng.standard_normal((factors, 16)) + 0.5 * rng.standard_normal((s, 16))
    splits = make_splits(np.arange(s) % 4, "stratified_kfold", 5, seed=0)
    model, kw = passthrough(), dict(input_size=SIZE, mean=(0, 0, 0), std=(1, 1, 1))
    rp = {"0": SpatialReduction(method="random_projection", components=96)}
    a = extract_spatial_features(model, stimuli, rp, seed=7, batch_size=16, **kw)["0"]
    b = extract_spatial_features(model, stimuli, rp, seed=7, batch_size=50, **kw)["0"]
    c = extract_spatial_features(model, stimuli, rp, seed=8, batch_size=16, **kw)["0"]
    assert a.shape == (s, 96)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)  # same seed: the same projection, whatever the batches
    assert np.abs(a - c).max() > 0.1  # another seed: another projection
    full = extract_features(model, stimuli, ["0"], pooling="flatten", **kw)["0"]
    pooled = extract_features(model, stimuli, ["0"], pooling="avg", **kw)["0"]

    def raw(x):
        return score_predictivity(x, responses, splits, np.ones(16), mapping="pls", n_components=8, seed=0).raw

    r_rp, r_full, r_avg = raw(a), raw(full), raw(pooled)
    print(f"planted spatial signal: random projection r={r_rp:.3f}, all units r={r_full:.3f}, avg pooling r={r_avg:.3f}")
    assert r_full > 0.8 and r_rp > r_full - 0.05 and r_avg < 0.3
    gauss = extract_spatial_features(model, stimuli, {"0": SpatialReduction(method="random_projection", components=96,
                                                                             projection="gaussian")}, seed=7, **kw)["0"]
    assert raw(gauss) > r_full - 0.05


def test_streaming_pca_fits_on_the_given_images():
    rng = np.random.default_rng(3)
    stimuli = rng.integers(0, 255, (60, SIZE, SIZE, 3), dtype=np.uint8)
    other = to_images(128 + 40 * rng.standard_normal((50, 1, 1, 1)) * pattern("halves"))
    model, kw = passthrough(), dict(input_size=SIZE, mean=(0, 0, 0), std=(1, 1, 1), seed=0)
    ipca = {"0": SpatialReduction(method="incremental_pca", components=5)}
    on_stimuli = extract_spatial_features(model, stimuli, ipca, batch_size=7, **kw)["0"]
    again = extract_spatial_features(model, stimuli, ipca, batch_size=25, **kw)["0"]
    on_other = extract_spatial_features(model, stimuli, ipca, fit_images=other, **kw)["0"]
    assert on_stimuli.shape == on_other.shape == (60, 5)
    np.testing.assert_allclose(np.abs(on_stimuli), np.abs(again), atol=1e-4)  # chunks do not follow batch_size
    x = extract_features(model, stimuli, ["0"], pooling="flatten", **{k: v for k, v in kw.items() if k != "seed"})["0"]
    # first component fitted on the other images is the 'halves' direction
    halves = pattern("halves").transpose(2, 0, 1).reshape(-1) / np.sqrt(SIZE * SIZE * 3)
    centred = x - x.mean(axis=0)
    assert abs(np.corrcoef(on_other[:, 0], centred @ halves)[0, 1]) > 0.99
    assert abs(np.corrcoef(on_stimuli[:, 0], centred @ halves)[0, 1]) < 0.6


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_capped_for_a_big_layer():
    """A 16 x 32 x 32 layer (16,384 units): all units of 2,000 stimuli take 131 MB as float32, and grow with the
    stimuli; reduced on the fly (streaming PCA and a sparse projection), the peak of numpy memory (tracemalloc:
    the reductions' state, buffers and outputs; torch's per-batch activations are bounded by the batch) stays
    within the estimate the cap is checked against, and does not grow with the number of stimuli."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1)).eval()
    rng = np.random.default_rng(4)
    kw = dict(input_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), seed=0, batch_size=32)
    reductions = {"0": SpatialReduction(method="incremental_pca", components=16)}
    projections = {"0": SpatialReduction(method="random_projection", components=64)}
    warm = rng.integers(0, 255, (40, 32, 32, 3), dtype=np.uint8)
    for red in (reductions, projections):  # imports and first-call allocations are not the layer's
        extract_spatial_features(model, warm, red, **kw)
    peaks, estimates = {}, {}
    for s in (250, 2000):
        images = rng.integers(0, 255, (s, 32, 32, 3), dtype=np.uint8)
        for name, red in (("ipca", reductions), ("rp", projections)):
            peaks[name, s] = _peak(lambda: extract_spatial_features(model, images, red, **kw))
            plan = plan_spatial(red, {"0": 16 * 32 * 32}, s)["0"]
            estimates[name, s] = plan.bytes_needed(s, kw["batch_size"])
    full = 2000 * 16 * 32 * 32 * 4
    print({f"{n}@{s}": f"peak {peaks[n, s] / 1e6:.1f} MB, estimate {estimates[n, s] / 1e6:.1f} MB" for n, s in peaks},
          f"all units of 2000 stimuli: {full / 1e6:.1f} MB")
    for key, peak in peaks.items():
        assert peak <= estimates[key], (key, peak, estimates[key])
    for name in ("ipca", "rp"):
        assert peaks[name, 2000] - peaks[name, 250] < 2_000_000  # 8x the stimuli: not 8x the memory
        assert peaks[name, 2000] < full / 3
    # The cap: the same budget refuses all units, and admits the reduction.
    budget = estimates["ipca", 2000]
    images = rng.integers(0, 255, (2000, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(ResourceLimitError, match="use pooling"):
        extract_features(model, images, ["0"], pooling="flatten", max_bytes=budget,
                         **{k: v for k, v in kw.items() if k != "seed"})
    with pytest.raises(ResourceLimitError, match="spatial features .*incremental_pca 16384->16"):
        extract_spatial_features(model, images, reductions, max_bytes=budget // 2, **kw)


def test_spatial_settings_are_validated():
    base = {**TINY["scoring"][0]}
    with pytest.raises(SpecError, match=r"spatial names \['layer3'\], not in layers"):
        parse_spec({**TINY, "scoring": [{**base, "spatial": {"layer3": {"method": "random_projection"}}}]})
    with pytest.raises(SpecError, match="spatial"):
        parse_spec({**TINY, "scoring": [{**base, "spatial": {"layer1": {"method": "pca"}}}]})
    spec = parse_spec({**TINY, "scoring": [{**base, "spatial": {"layer1": {"method": "incremental_pca", "components": 8}}}]})
    assert spec.scoring[0].spatial["layer1"].components == 8


def test_scoring_a_run_with_spatial_layers(tmp_path, finished_store):
    from services.neuro.scoring import score_run

    rng = np.random.default_rng(5)
    folder = write_folder(tmp_path / "fit", rng.integers(0, 255, (24, 48, 48, 3), dtype=np.uint8))
    entry = {**TINY["scoring"][0], "compare_models": False, "bootstrap": 0, "pca_fit_images": str(folder),
             "spatial": {"layer1": {"method": "random_projection", "components": 64},
                         "layer2": {"method": "incremental_pca", "components": 30}}}
    spec = parse_spec({**TINY, "scoring": [entry]})
    record = score_run(spec, finished_store, spec.scoring[0], "run-a", "planted")
    # every unit of layer1 (64 x 16 x 16) projected to 64; layer2's streaming PCA has 24 fit images: 24 components;
    # layer4 is pooled (512) and PCA'd on the folder (24)
    assert record["feature_dims"] == {"layer1": 64, "layer2": 24, "layer4": 512}
    assert record["mapped_dims"] == {"layer1": 64, "layer2": 24, "layer4": 24}
    keys = [k for k in finished_store.list("features/") if "/layer1." in k or "/layer2." in k]
    assert any(k.endswith("layer1.rp-sparse64-seed0.npy") for k in keys)
    assert any("layer2.ipca30-fit" in k for k in keys)
    assert all(np.isfinite(record["predictivity"]["planted"][layer]["raw"]) for layer in ("layer1", "layer2", "layer4"))
