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
    brainscore_internal_consistency,
    mean_pairwise_r,
    read_split_file,
    reliability_ceiling,
    split_correlations,
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
    assert make_splits(objects, "stratified_kfold", 10, seed=1)[3][1].tolist() != kfold[3][1].tolist()
    shuffle = make_splits(objects, "brainscore", 10, seed=0)
    assert len(shuffle) == 10 and all(len(te) == 6 for _, te in shuffle)
    # Brain-Score's random state is fixed (1): the seed does not move its splits.
    assert all(a[1].tolist() == b[1].tolist() for a, b in zip(make_splits(objects, "brainscore", 10, seed=1), shuffle))
    with pytest.raises(ValueError, match="unknown scheme"):
        make_splits(objects, "loo", 10, seed=0)


def test_brainscore_splits_equal_brainscores_own():
    """Brain-Score: Split.Defaults.random_state = 1, CrossRegressedCorrelation train_size=.9, stratified on object_name."""
    from sklearn.model_selection import StratifiedShuffleSplit

    rng = np.random.default_rng(0)
    objects = rng.permutation(np.repeat([f"obj{k:02d}" for k in range(64)], 10))  # 640 stimuli, 64 objects, any order
    ours = make_splits(objects, "brainscore", 10, seed=123)
    for reference in (StratifiedShuffleSplit(10, test_size=0.1, random_state=1),
                      StratifiedShuffleSplit(10, train_size=0.9, test_size=None, random_state=1)):
        theirs = list(reference.split(np.zeros(len(objects)), objects))
        assert len(ours) == len(theirs) == 10
        for (train, test), (ref_train, ref_test) in zip(ours, theirs):
            assert train.tolist() == sorted(ref_train.tolist()) and test.tolist() == sorted(ref_test.tolist())


def _brainscore_pls_metric(x, y, objects):
    """Brain-Score's `pls` metric, re-implemented from brainscore_vision (metrics/regression_correlation,
    metric_helpers/transformations): CrossRegressedCorrelation(pls_regression(), pearsonr_correlation()).

    Splits StratifiedShuffleSplit(n_splits=10, train_size=.9, test_size=None, random_state=1) on object
    labels; PLSRegression(n_components=25, scale=False) with scikit-learn's default max_iter/tol; scipy's
    pearsonr per neuroid on the test stimuli; median over neuroids per split; mean over splits.
    """
    from scipy.stats import pearsonr as scipy_pearsonr
    from sklearn.cross_decomposition import PLSRegression
    from sklearn.model_selection import StratifiedShuffleSplit

    medians = []
    for train, test in StratifiedShuffleSplit(n_splits=10, train_size=.9, test_size=None, random_state=1).split(
            np.zeros(len(objects)), objects):
        model = PLSRegression(n_components=25, scale=False).fit(x[train], y[train])
        prediction = model.predict(x[test])
        r = [scipy_pearsonr(y[test, n], prediction[:, n])[0] for n in range(y.shape[1])]
        medians.append(np.median(r))
    return float(np.mean(medians)), float(np.std(medians) / np.sqrt(len(medians)))


def _brainscore_internal_consistency(presentations):
    """Brain-Score's InternalConsistency: ShuffleSplit(10, train_size=0.5, random_state=1) over repetitions,
    half means, scipy pearsonr per neuroid, Spearman-Brown n=2, median over neuroids, mean over splits."""
    from scipy.stats import pearsonr as scipy_pearsonr
    from sklearn.model_selection import ShuffleSplit

    values = []
    for a, b in ShuffleSplit(n_splits=10, train_size=0.5, test_size=None, random_state=1).split(np.zeros(presentations.shape[1])):
        ha, hb = presentations[:, a].mean(axis=1), presentations[:, b].mean(axis=1)
        r = np.array([scipy_pearsonr(ha[:, n], hb[:, n])[0] for n in range(ha.shape[1])])
        values.append(np.median(2 * r / (1 + r)))
    return float(np.mean(values))


@pytest.mark.parametrize("repetitions", [4, 3])
def test_brainscore_mode_agrees_with_brainscores_pls_metric(repetitions):
    """Planted data scored in Brain-Score mode: raw, ceiling and ceiled score as Brain-Score computes them."""
    rng = np.random.default_rng(7)
    stimuli, dims, neuroids, reliability = 320, 80, 48, 0.7
    x = rng.normal(size=(stimuli, dims)) * (1.0 / np.sqrt(1 + np.arange(dims)))
    signal = x @ rng.normal(size=(dims, neuroids))
    signal = (signal - signal.mean(0)) / signal.std(0)
    noise_sd = np.sqrt(repetitions * (1 - reliability) / reliability)
    presentations = signal[:, None] + rng.normal(scale=noise_sd, size=(stimuli, repetitions, neuroids))
    objects = rng.permutation(np.repeat([f"o{k:02d}" for k in range(32)], 10))

    consistency = brainscore_internal_consistency(presentations)
    assert consistency["ceiling"] == pytest.approx(_brainscore_internal_consistency(presentations), abs=1e-12)
    splits = make_splits(objects, "brainscore", 10, seed=0)
    result = score_predictivity(x, presentations.mean(axis=1), splits, reliability_ceiling(presentations),
                                bootstrap=0, seed=0, brainscore_ceiling=consistency["ceiling"])
    ours = result.summary()["brainscore"]
    raw, error = _brainscore_pls_metric(x, presentations.mean(axis=1), objects)
    assert abs(ours["raw"] - raw) < 1e-3
    assert ours["error"] == pytest.approx(error, abs=1e-3)
    assert ours["ceiling"] == pytest.approx(consistency["ceiling"])
    assert abs(ours["score"] - raw**2 / consistency["ceiling"]) < 1e-3
    assert 0.2 < raw < 0.9  # a learnable target: the planted map is recovered, not noise


def test_split_file_by_ids_and_indices():
    ids = np.array([f"s{i}" for i in range(8)], dtype=object)
    by_id = read_split_file('{"format": "flatland-splits", "splits": [{"train": ["s0", "s1", "s5"], "test": ["s7", "s2"]}]}', ids)
    by_index = read_split_file({"format": "flatland-splits", "splits": [{"train": [5, 1, 0], "test": [2, 7]}]}, ids)
    for (train, test), (train2, test2) in zip(by_id, by_index):
        assert train.tolist() == train2.tolist() == [0, 1, 5] and test.tolist() == test2.tolist() == [2, 7]


@pytest.mark.parametrize("text, message", [
    ("not json", "not a JSON split file"),
    ('{"splits": []}', "flatland-splits"),
    ('{"format": "flatland-splits", "splits": []}', "non-empty list"),
    ('{"format": "flatland-splits", "splits": [{"train": [0, 1]}]}', "split 0 must be an object with exactly"),
    ('{"format": "flatland-splits", "splits": [{"train": [0, 1], "test": [1, 2]}]}', r"split 0 has 1 .* both train and test"),
    ('{"format": "flatland-splits", "splits": [{"train": ["s0", "zz"], "test": [2, 3]}]}', r"split 0 train names 1 stimulus id.*zz"),
    ('{"format": "flatland-splits", "splits": [{"train": [0, 1], "test": [2, 99]}]}', r"split 0 test has indices outside 0..7.*99"),
    ('{"format": "flatland-splits", "splits": [{"train": [0, "s1"], "test": [2, 3]}]}', "all stimulus ids .* or all indices"),
    ('{"format": "flatland-splits", "splits": [{"train": [0, 1], "test": [2]}]}', "split 0 test must list at least 2"),
    ('{"format": "flatland-splits", "splits": [{"train": [0, 0, 1], "test": [2, 3]}]}', "more than once"),
])
def test_split_file_errors_name_the_problem(text, message):
    ids = np.array([f"s{i}" for i in range(8)], dtype=object)
    with pytest.raises(ValueError, match=message):
        read_split_file(text, ids, name="splits.json")


@pytest.mark.parametrize("repetitions", [2, 3, 4, 5])
def test_ceiling_unbiased_for_any_repetition_count(repetitions):
    """Planted reliability of the repetition mean (0.7, 0.4): the ceiling recovers it within 0.01 at 2-5 repetitions."""
    rng = np.random.default_rng(100 + repetitions)
    stimuli, neuroids = 300, 600
    for reliability in (0.7, 0.4):
        signal = rng.normal(size=(stimuli, neuroids))
        signal = (signal - signal.mean(0)) / signal.std(0)
        noise_sd = np.sqrt(repetitions * (1 - reliability) / reliability)  # var(noise mean) = (1 - rel) / rel
        presentations = signal[:, None] + rng.normal(scale=noise_sd, size=(stimuli, repetitions, neuroids))
        ceiling = reliability_ceiling(presentations)
        assert abs(ceiling.mean() - reliability) < 0.01, (repetitions, reliability, ceiling.mean())
        assert abs(np.median(ceiling) - reliability) < 0.01, (repetitions, reliability, np.median(ceiling))


def test_mean_pairwise_r_is_the_mean_over_pairs():
    rng = np.random.default_rng(3)
    presentations = rng.normal(size=(40, 5, 7)) + rng.normal(size=(40, 1, 7))
    presentations[:, 2, 0] = 1.0  # a constant repetition counts as r = 0, as pearson_columns does
    pairs = [(i, j) for i in range(5) for j in range(i + 1, 5)]
    expected = np.mean([pearson_columns(presentations[:, i], presentations[:, j]) for i, j in pairs], axis=0)
    np.testing.assert_allclose(mean_pairwise_r(presentations), expected, atol=1e-12)
    np.testing.assert_allclose(reliability_ceiling(presentations), spearman_brown(expected, 5), atol=1e-12)
    assert spearman_brown(0.5) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="repetitions>=2"):
        reliability_ceiling(presentations[:, :1])


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
