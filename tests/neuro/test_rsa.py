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
    assert high["ceiling"] >= high["split_half"]  # Spearman-Brown raises a positive consistency
