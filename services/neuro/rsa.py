"""Representational similarity analysis: RDMs and their comparison.

An RDM is kept condensed: the upper triangle (``i < j``, row-major, as
``scipy.spatial.distance.pdist`` orders it) of the stimulus × stimulus
dissimilarity matrix, ``S (S - 1) / 2`` values. Comparisons are rank correlations
between condensed RDMs: Spearman's rho, or Kendall's tau-a (the RSA toolbox's
choice when models predict tied dissimilarities; scipy's ``kendalltau`` computes
tau-b, so tau-a is derived from it here).
"""

from __future__ import annotations


import numpy as np
from scipy.spatial.distance import pdist, squareform
from scipy.stats import kendalltau, rankdata

from services.common.seeds import derive_rng
from services.neuro.predictivity import spearman_brown

RDM_METRICS = ("correlation", "euclidean")


def rdm(patterns: np.ndarray, metric: str = "correlation") -> np.ndarray:
    """Condensed RDM of response patterns.

    Parameters
    ----------
    patterns : (S, D) float
        One pattern (feature vector or population response) per stimulus.
    metric : {"correlation", "euclidean"}
        ``correlation``: 1 − Pearson r between patterns; ``euclidean``: Euclidean distance.

    Returns
    -------
    (S * (S - 1) / 2,) float64
    """
    x = np.asarray(patterns, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 3:
        raise ValueError(f"an RDM needs (stimuli >= 3, features) patterns, got shape {x.shape}")
    if metric == "correlation":
        centred = x - x.mean(axis=1, keepdims=True)
        norms = np.linalg.norm(centred, axis=1)
        unit = np.divide(centred, norms[:, None], out=np.zeros_like(centred), where=norms[:, None] > 0)
        corr = np.clip(unit @ unit.T, -1.0, 1.0)
        return 1.0 - corr[np.triu_indices(len(x), k=1)]
    if metric == "euclidean":
        return pdist(x, metric="euclidean")
    raise ValueError(f"rdm_metric: unknown {metric!r} (known: {', '.join(RDM_METRICS)})")


def square(condensed: np.ndarray) -> np.ndarray:
    """The full symmetric (S, S) matrix of a condensed RDM (zero diagonal)."""
    return squareform(np.asarray(condensed, dtype=np.float64), checks=False)


def _ranks(rdms: np.ndarray) -> np.ndarray:
    return rankdata(rdms, axis=-1)


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r between every row of ``a`` (m, n) and every row of ``b`` (k, n): (m, k)."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    denom = np.outer(na, nb)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (a @ b.T) / np.where(denom > 0, denom, 1.0), np.nan)


def spearman_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rho between every pair of condensed RDMs: rows of ``a`` (m, n) × rows of ``b`` (k, n) → (m, k).

    Each RDM is ranked once (average ranks for ties, as scipy), then all pairs are
    Pearson-correlated in one matrix product.
    """
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    return _pearson_rows(_ranks(a), _ranks(b))


def _tied_pairs(values: np.ndarray) -> int:
    _, counts = np.unique(values, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def kendall_tau_a(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-a: (concordant − discordant pairs) / (n (n − 1) / 2).

    Pairs tied in either variable count as neither. Computed in O(n log n) from
    scipy's tau-b, whose numerator is the same ``C − D``:
    ``tau_b = (C − D) / sqrt((n0 − n1)(n0 − n2))`` with ``n0 = n(n−1)/2`` and
    ``n1``, ``n2`` the pairs tied in ``x`` and in ``y``.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"kendall_tau_a needs equal lengths, got {x.size} and {y.size}")
    n = x.size
    n0 = n * (n - 1) // 2
    if n0 == 0:
        return float("nan")
    n1, n2 = _tied_pairs(x), _tied_pairs(y)
    if n1 == n0 or n2 == n0:
        return 0.0  # one variable constant: no pair is concordant or discordant
    tau_b = kendalltau(x, y, variant="b").statistic
    return float(tau_b * np.sqrt(float(n0 - n1) * float(n0 - n2)) / n0)


def compare_rdms(a: np.ndarray, b: np.ndarray, method: str = "spearman") -> np.ndarray:
    """Similarity of every RDM in ``a`` (m, n) to every RDM in ``b`` (k, n): (m, k).

    ``method`` is ``spearman`` (vectorised) or ``kendall_tau_a``.
    """
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"RDMs over different stimulus sets: {a.shape[1]} vs {b.shape[1]} dissimilarities")
    if method == "spearman":
        return spearman_matrix(a, b)
    if method == "kendall_tau_a":
        return np.array([[kendall_tau_a(ra, rb) for rb in b] for ra in a])
    raise ValueError(f"rsa_compare: unknown {method!r} (known: spearman, kendall_tau_a)")


def rsa_noise_ceiling(
    presentations: np.ndarray, *, metric: str = "correlation", method: str = "spearman", max_pairs: int = 45, seed: int
) -> dict:
    """RSA noise ceiling of a region, from every repetition.

    The RDM of each single repetition is compared with that of every other (``method``);
    the mean over pairs estimates the consistency of one repetition's RDM, and
    Spearman–Brown with factor ``R`` carries it to the RDM of the mean over all ``R``
    repetitions (a split half with odd ``R`` would drop one repetition and correct by
    2). For Spearman all pairs are used at once (standardised ranks: the sum over pairs
    of their products is ``|sum|^2 - sum of squares``); Kendall's tau-a compares pairs
    one by one, at most ``max_pairs`` of them (a seeded random choice beyond that).

    Parameters
    ----------
    presentations : (S, R, N) float, R >= 2

    Returns
    -------
    dict with ``pairwise`` (mean similarity of single-repetition RDMs), ``ceiling``
    (Spearman–Brown corrected to ``R``), ``repetitions`` and ``pairs`` (pairs compared).
    """
    p = np.asarray(presentations, dtype=np.float64)
    if p.ndim != 3 or p.shape[1] < 2:
        raise ValueError(f"RSA ceiling needs (stimuli, repetitions>=2, neuroids) responses, got shape {p.shape}")
    reps = p.shape[1]
    all_pairs = reps * (reps - 1) // 2
    if method == "spearman":
        total, squares = None, 0.0
        for i in range(reps):  # one RDM in memory at a time
            ranks = _ranks(rdm(p[:, i], metric)[None])[0]
            ranks -= ranks.mean()
            norm = np.linalg.norm(ranks)
            z = ranks / norm if norm > 0 else ranks * 0.0
            total = z if total is None else total + z
            squares += float(z @ z)
        pairwise = (float(total @ total) - squares) / (reps * (reps - 1))
        pairs = all_pairs
    elif method == "kendall_tau_a":
        index = [(i, j) for i in range(reps) for j in range(i + 1, reps)]
        if len(index) > max_pairs:
            chosen = derive_rng(seed, "neuro", "rsa-ceiling").choice(len(index), size=max_pairs, replace=False)
            index = [index[k] for k in sorted(chosen)]
        cache: dict[int, np.ndarray] = {}
        def single(i: int) -> np.ndarray:
            if i not in cache:
                cache[i] = rdm(p[:, i], metric)
            return cache[i]
        pairwise = float(np.mean([kendall_tau_a(single(i), single(j)) for i, j in index]))
        pairs = len(index)
    else:
        raise ValueError(f"rsa_compare: unknown {method!r} (known: spearman, kendall_tau_a)")
    return {"pairwise": pairwise, "ceiling": float(spearman_brown(pairwise, factor=reps)), "repetitions": reps, "pairs": pairs}
