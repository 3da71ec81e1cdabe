"""PLS predictivity against scikit-learn's reference, splits, ceiling and bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr

from services.neuro.predictivity import (
    ikpls_split_predictions,
    make_splits,
    pearson_columns,
    pls_split_predictions,
    reference_split_r,
    score_predictivity,
    spearman_brown,
    split_correlations,
    split_half_ceiling,
)


def _problem(seed=0, stimuli=150, dims=60, neuroids=20):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(stimuli, dims)) @ rng.normal(size=(dims, dims))
    y = x @ rng.normal(size=(dims, neuroids)) / 10 + rng.normal(size=(stimuli, neuroids)) * 3
    objects = np.repeat([f"o{k}" for k in range(10)], stimuli // 10)
    return x, y, objects


def _diff_from_converged(x, y, splits, components):
    """Max |r_ours - r_converged scikit-learn| over splits and neuroids."""
    ours = split_correlations(y, splits, pls_split_predictions(x, y, splits, components))
    converged = reference_split_r(x, y, splits, components, max_iter=100_000, tol=1e-14)
    return np.abs(ours - converged).max()


@pytest.mark.parametrize("scheme", ["stratified_kfold", "brainscore"])
def test_pls_matches_converged_sklearn(scheme):
    x, y, objects = _problem(neuroids=40)  # 40 neuroids < 60 features: the Lanczos branch
    splits = make_splits(objects, scheme, 5, seed=3)
    ours = split_correlations(y, splits, pls_split_predictions(x, y, splits, 25))
    converged = reference_split_r(x, y, splits, 25, max_iter=100_000, tol=1e-14)
    default = reference_split_r(x, y, splits, 25)
    assert np.abs(ours - converged).max() < 1e-4
    via_ikpls = split_correlations(y, splits, ikpls_split_predictions(x, y, splits, 25))
    assert np.abs(ours - via_ikpls).max() < 1e-8
    # The default NIPALS stops early on this problem: that is why the converged run is the reference.
    assert np.abs(ours - default).max() > np.abs(ours - converged).max()


def test_pls_many_neuroids_and_uncentred_features():
    # More neuroids than features (the other eigen-branch), features far from zero mean.
    rng = np.random.default_rng(5)
    x = 50 + rng.normal(size=(120, 40)) @ rng.normal(size=(40, 40))
    y = (x - 50) @ rng.normal(size=(40, 70)) / 5 + rng.normal(size=(120, 70)) * 4
    objects = np.repeat([f"o{k}" for k in range(6)], 20)
    splits = make_splits(objects, "brainscore", 4, seed=1)
    assert _diff_from_converged(x, y, splits, 25) < 1e-4


def test_pls_components_clipped_to_features():
    x, y, objects = _problem(stimuli=60, dims=8)
    splits = make_splits(objects, "stratified_kfold", 3, seed=0)
    assert _diff_from_converged(x, y, splits, 25) < 1e-4


def test_pls_more_features_than_stimuli():
    # D > S: the features are rotated into the stimuli's span first; predictions must not change.
    rng = np.random.default_rng(7)
    x = rng.normal(size=(80, 300)) + 3.0
    y = x[:, :30] @ rng.normal(size=(30, 12)) / 5 + rng.normal(size=(80, 12))
    objects = np.repeat([f"o{k}" for k in range(8)], 10)
    splits = make_splits(objects, "stratified_kfold", 4, seed=2)
    assert _diff_from_converged(x, y, splits, 10) < 1e-4


def test_pls_splits_that_leave_stimuli_out():
    # Train and test need not cover every stimulus: the Gram downdate removes all non-training rows.
    x, y, _ = _problem(neuroids=15)
    rng = np.random.default_rng(3)
    splits = []
    for _ in range(3):
        order = rng.permutation(len(x))
        splits.append((np.sort(order[:90]), np.sort(order[90:120])))  # 30 stimuli in neither
    assert _diff_from_converged(x, y, splits, 12) < 1e-4


def test_pls_stops_at_the_rank_of_the_features():
    # 5 independent features repeated: past 5 components nothing is left to fit, so asking
    # for 25 gives the 5-component model (scikit-learn would divide by zero there).
    rng = np.random.default_rng(4)
    base = rng.normal(size=(100, 5))
    x = np.hstack([base, base @ rng.normal(size=(5, 7))])
    y = base @ rng.normal(size=(5, 9)) + rng.normal(size=(100, 9))
    objects = np.repeat([f"o{k}" for k in range(5)], 20)
    splits = make_splits(objects, "brainscore", 3, seed=0)
    many = pls_split_predictions(x, y, splits, 25)
    five = pls_split_predictions(x, y, splits, 5)
    for a, b in zip(many, five):
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, b, atol=1e-8)
    converged = reference_split_r(x, y, splits, 5, max_iter=100_000, tol=1e-14)
    assert np.abs(split_correlations(y, splits, many) - converged).max() < 1e-4


def test_pearson_columns_matches_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(30, 5)), rng.normal(size=(30, 5))
    expected = [pearsonr(a[:, j], b[:, j]).statistic for j in range(5)]
    np.testing.assert_allclose(pearson_columns(a, b), expected, atol=1e-12)
    assert pearson_columns(np.ones((5, 1)), a[:5, :1])[0] == 0.0


def test_splits_stratified_and_partition():
    objects = np.repeat([f"o{k}" for k in range(6)], 10)
    kfold = make_splits(objects, "stratified_kfold", 10, seed=0)
    tests = np.concatenate([te for _, te in kfold])
    assert sorted(tests.tolist()) == list(range(60))  # every stimulus held out once
    for train, test in kfold:
        assert not set(train) & set(test)
        assert len(set(objects[test])) == 6  # each fold holds out one stimulus per object
    shuffle = make_splits(objects, "brainscore", 10, seed=0)
    assert len(shuffle) == 10 and all(len(te) == 6 for _, te in shuffle)
    assert make_splits(objects, "brainscore", 10, seed=0)[3][1].tolist() == shuffle[3][1].tolist()
    assert make_splits(objects, "brainscore", 10, seed=1)[3][1].tolist() != shuffle[3][1].tolist()


def test_split_half_ceiling_recovers_known_reliability():
    rng = np.random.default_rng(2)
    stimuli, reps, neuroids, reliability = 400, 6, 30, 0.6
    noise_sd = np.sqrt(reps * (1 - reliability) / reliability)
    signal = rng.normal(size=(stimuli, 1, neuroids))
    presentations = signal + rng.normal(scale=noise_sd, size=(stimuli, reps, neuroids))
    ceiling = split_half_ceiling(presentations, 10, seed=0)
    assert abs(np.median(ceiling) - reliability) < 0.05
    assert spearman_brown(0.5) == pytest.approx(2 / 3)


def test_score_summary_and_bootstrap():
    x, y, objects = _problem(neuroids=40)
    splits = make_splits(objects, "stratified_kfold", 5, seed=0)
    result = score_predictivity(x, y, splits, np.full(40, 0.81), bootstrap=200, seed=0)
    s = result.summary()
    assert s["raw_ci"][0] <= s["raw"] <= s["raw_ci"][1]
    assert s["r_over_ceiling"] == pytest.approx(s["raw"] / 0.81)
    assert len(s["split_scores"]) == 5 and s["split_std"] > 0
    ridge = score_predictivity(x, y, splits, np.full(40, 0.81), mapping="ridge", ridge_alphas=[0.1, 10, 1000], bootstrap=0, seed=0)
    assert ridge.raw > 0.3  # y is linear in x: ridge finds it too
    with pytest.raises(ValueError, match="mapping"):
        score_predictivity(x, y, splits, np.ones(40), mapping="lasso", seed=0)
