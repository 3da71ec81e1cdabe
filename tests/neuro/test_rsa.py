"""RDMs and their comparison agree with scipy; Kendall's tau-a against its O(n^2) definition."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.spatial.distance import pdist
from scipy.stats import kendalltau, spearmanr

from services.neuro.rsa import compare_rdms, kendall_tau_a, rdm, rsa_noise_ceiling, square


def tau_a_direct(x, y):
    n = len(x)
    total = 0
    for i, j in itertools.combinations(range(n), 2):
        total += np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])
    return total / (n * (n - 1) / 2)


def test_rdms_match_scipy_pdist():
    rng = np.random.default_rng(0)
    patterns = rng.normal(size=(12, 7))
    np.testing.assert_allclose(rdm(patterns, "correlation"), pdist(patterns, "correlation"), atol=1e-12)
    np.testing.assert_allclose(rdm(patterns, "euclidean"), pdist(patterns, "euclidean"), atol=1e-12)
    full = square(rdm(patterns))
    assert full.shape == (12, 12) and np.allclose(full, full.T) and np.allclose(np.diag(full), 0)
    with pytest.raises(ValueError, match="rdm_metric"):
        rdm(patterns, "cosine")


def test_spearman_matrix_matches_scipy_with_ties():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 5, size=(3, 45)).astype(float)  # many ties
    b = rng.normal(size=(2, 45))
    ours = compare_rdms(a, b, "spearman")
    for i, j in itertools.product(range(3), range(2)):
        assert ours[i, j] == pytest.approx(spearmanr(a[i], b[j]).statistic, abs=1e-12)


def test_kendall_tau_a_direct_definition_with_ties():
    rng = np.random.default_rng(2)
    for _ in range(5):
        x = rng.integers(0, 4, size=25).astype(float)
        y = rng.integers(0, 3, size=25).astype(float)
        assert kendall_tau_a(x, y) == pytest.approx(tau_a_direct(x, y), abs=1e-12)
    # With ties tau-a and tau-b differ: scipy's kendalltau alone would be wrong here.
    assert abs(kendall_tau_a(x, y) - kendalltau(x, y).statistic) > 1e-3
    assert kendall_tau_a(np.ones(5), np.arange(5.0)) == 0.0


def test_kendall_tau_a_equals_scipy_without_ties():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=60), rng.normal(size=60)
    assert kendall_tau_a(x, y) == pytest.approx(kendalltau(x, y).statistic, abs=1e-12)
    assert compare_rdms(x, y, "kendall_tau_a")[0, 0] == pytest.approx(tau_a_direct(x, y), abs=1e-12)


def test_rsa_ceiling_higher_for_reliable_data():
    rng = np.random.default_rng(4)
    signal = rng.normal(size=(30, 1, 20))
    clean = signal + 0.3 * rng.normal(size=(30, 4, 20))
    noisy = signal + 3.0 * rng.normal(size=(30, 4, 20))
    high = rsa_noise_ceiling(clean, seed=0)
    low = rsa_noise_ceiling(noisy, seed=0)
    assert high["ceiling"] > 0.8 > low["ceiling"]
    assert high["ceiling"] >= high["pairwise"]  # Spearman-Brown raises a positive consistency


@pytest.mark.parametrize("method", ["spearman", "kendall_tau_a"])
@pytest.mark.parametrize("repetitions", [2, 3, 5])
def test_rsa_ceiling_uses_every_repetition(method, repetitions):
    """Every pair of single-repetition RDMs, compared directly, averaged and corrected with factor R (no repetition dropped)."""
    rng = np.random.default_rng(repetitions)
    presentations = rng.normal(size=(14, 1, 9)) + 0.8 * rng.normal(size=(14, repetitions, 9))
    single = [rdm(presentations[:, i]) for i in range(repetitions)]
    pairs = list(itertools.combinations(range(repetitions), 2))
    compare = spearmanr if method == "spearman" else (lambda a, b: kendall_tau_a(a, b))
    mean = np.mean([float(getattr(compare(single[i], single[j]), "statistic", compare(single[i], single[j]))) for i, j in pairs])
    result = rsa_noise_ceiling(presentations, method=method, seed=0)
    assert result["pairs"] == len(pairs) and result["repetitions"] == repetitions
    assert result["pairwise"] == pytest.approx(mean, abs=1e-10)
    assert result["ceiling"] == pytest.approx(repetitions * mean / (1 + (repetitions - 1) * mean), abs=1e-10)


def test_rsa_ceiling_kendall_samples_pairs_beyond_the_cap():
    rng = np.random.default_rng(5)
    presentations = rng.normal(size=(10, 1, 6)) + rng.normal(size=(10, 8, 6))  # 28 pairs
    capped = rsa_noise_ceiling(presentations, method="kendall_tau_a", max_pairs=5, seed=0)
    assert capped["pairs"] == 5
    assert capped == rsa_noise_ceiling(presentations, method="kendall_tau_a", max_pairs=5, seed=0)  # seeded
    with pytest.raises(ValueError, match="rsa_compare"):
        rsa_noise_ceiling(presentations, method="pearson", seed=0)
