"""Neural predictivity: cross-validated linear mapping from features to responses.

The protocol (one place, as Brain-Score's ``NeuralBenchmark``): optional PCA of the
features, a mapping (PLS with 25 components and no scaling, or ridge) fitted on the
training stimuli of each split to the repetition-averaged responses, Pearson r per
neuroid on the held-out stimuli, median over neuroids, and a split-half noise ceiling
over repetitions with Spearman–Brown correction.

PLS is Improved Kernel PLS (Dayal & MacGregor's algorithm 2, as in the ``ikpls``
package, which the tests use as a cross-check): ``X^T X`` and ``X^T Y`` are computed
once for all stimuli and every split's training Gram matrices are those minus its
held-out rows; every fit is multi-target, so all neuroids of a region share one
decomposition. Each weight vector is computed exactly (a dominant singular vector,
by Lanczos to machine precision) where scikit-learn's NIPALS iterates towards it,
so the result agrees with a NIPALS run to convergence (:func:`reference_split_r`),
not necessarily with one stopped at ``max_iter``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from services.common.seeds import derive_rng, derive_seed

Split = tuple[np.ndarray, np.ndarray]
NORMALISATION = (
    "r_over_ceiling: median over neuroids of Pearson r (averaged over splits) divided by the median "
    "Spearman-Brown corrected split-half ceiling (Brain-Score's convention); r2_over_ceiling: median over "
    "neuroids of r^2 / ceiling (fraction of explainable variance)"
)


# ---------------------------------------------------------------- splits


def make_splits(
    objects: Sequence[str] | np.ndarray,
    scheme: str = "stratified_kfold",
    n_splits: int = 10,
    *,
    seed: int,
    test_fraction: float = 0.1,
) -> list[Split]:
    """Train/test index pairs stratified by object label.

    Parameters
    ----------
    objects : (S,) str
        Object/category label of each stimulus.
    scheme : {"stratified_kfold", "brainscore"}
        ``stratified_kfold``: every stimulus is held out exactly once (the proposal's
        protocol). ``brainscore``: ``n_splits`` stratified shuffle splits holding out
        ``test_fraction`` (Brain-Score: 10 splits, 10 %).
    seed : int
        Root seed; the split generator's state derives from it.

    Returns
    -------
    list of (train (n_train,) int, test (n_test,) int), indices sorted.
    """
    from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit

    labels = np.asarray(objects).astype(str)
    state = derive_seed(seed, "neuro", "splits", scheme) % (2**32)
    _, counts = np.unique(labels, return_counts=True)
    if scheme == "stratified_kfold":
        if n_splits > len(labels):
            raise ValueError(f"n_splits ({n_splits}) exceeds the number of stimuli ({len(labels)})")
        splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=state)
    elif scheme == "brainscore":
        splitter = StratifiedShuffleSplit(n_splits=n_splits, test_size=test_fraction, random_state=state)
    else:
        raise ValueError(f"splits: unknown scheme {scheme!r} (known: stratified_kfold, brainscore)")
    with warnings.catch_warnings():
        # Objects with fewer stimuli than folds are still placed; sklearn warns about it.
        warnings.simplefilter("ignore", UserWarning)
        return [(np.sort(tr), np.sort(te)) for tr, te in splitter.split(np.zeros(len(labels)), labels)]


# ---------------------------------------------------------------- correlation


def pearson_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r between matching columns of ``a`` and ``b``.

    Parameters
    ----------
    a, b : (n, m) float

    Returns
    -------
    (m,) float64; 0 where either column is constant (no linear relation measurable).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    denom = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    num = (a * b).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(denom > 0, num / np.where(denom > 0, denom, 1.0), 0.0)
    return r


def spearman_brown(r: np.ndarray | float, factor: float = 2.0) -> np.ndarray:
    """Reliability of a measure ``factor`` times as long: ``factor r / (1 + (factor - 1) r)``."""
    r = np.asarray(r, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return factor * r / (1.0 + (factor - 1.0) * r)


# ---------------------------------------------------------------- mappings


def reduce_pca(features: np.ndarray, n_components: int | None, *, seed: int) -> np.ndarray:
    """PCA of the features to ``n_components`` (no-op when off or already that small).

    Fitted on all stimuli of the set (unsupervised: no responses involved), as
    Brain-Score reduces each layer to 1000 components before mapping.

    Returns
    -------
    (S, min(D, n_components, S)) float64
    """
    x = np.asarray(features, dtype=np.float64)
    if n_components is None or x.shape[1] <= n_components:
        return x
    from sklearn.decomposition import PCA

    k = min(n_components, x.shape[0])
    pca = PCA(n_components=k, svd_solver="randomized" if k < 0.8 * min(x.shape) else "full",
              random_state=derive_seed(seed, "neuro", "pca") % (2**32))
    # Small decompositions are much faster single-threaded on a busy machine (OpenBLAS contention).
    with threadpool_limits(limits=1 if x.size < 4_000_000 else None, user_api="blas"):
        return pca.fit_transform(x)


def _dominant_direction(xty: np.ndarray) -> np.ndarray:
    """Unit dominant left singular vector of ``xty`` (K, M): the PLS weight vector.

    Equivalent to the top eigenvector of ``xty xty^T`` (what IKPLS computes), found by
    Lanczos (ARPACK) run to machine precision on an implicit operator over the smaller
    of the two dimensions, so no K×K or M×M product is formed. Dense ``eigh`` for
    small problems or when Lanczos does not converge.
    """
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    k, m = xty.shape
    if m == 1:
        w = xty[:, 0]
        return w / np.linalg.norm(w)
    small = min(k, m)
    if small <= 32:
        if m < k:
            q = np.linalg.eigh(xty.T @ xty)[1][:, -1]
            w = xty @ q
        else:
            w = np.linalg.eigh(xty @ xty.T)[1][:, -1]
        return w / np.linalg.norm(w)
    if m < k:
        op = LinearOperator((m, m), matvec=lambda v: xty.T @ (xty @ v), dtype=np.float64)
        start = np.abs(xty).sum(axis=0)
    else:
        op = LinearOperator((k, k), matvec=lambda v: xty @ (xty.T @ v), dtype=np.float64)
        start = np.abs(xty).sum(axis=1)
    try:
        _, vec = eigsh(op, k=1, which="LA", tol=0, v0=start)
        v = vec[:, 0]
    except ArpackNoConvergence:
        v = np.linalg.eigh(xty.T @ xty if m < k else xty @ xty.T)[1][:, -1]
    w = xty @ v if m < k else v
    return w / np.linalg.norm(w)


def ikpls_coefficients(xtx: np.ndarray, xty: np.ndarray, n_components: int) -> np.ndarray:
    """PLS regression coefficients from centred Gram matrices (Improved Kernel PLS, algorithm 2).

    Dayal & MacGregor (1997): only ``X^T X`` and ``X^T Y`` are needed, so every split's
    fit reuses Gram matrices computed once for all stimuli. Stops early (fewer
    components) when the remaining score variance vanishes (past the rank of X).

    Parameters
    ----------
    xtx : (K, K) float64, centred ``X^T X`` of the training stimuli
    xty : (K, M) float64, centred ``X^T Y``

    Returns
    -------
    (K, M) float64: centred predictions are ``(x - mean_x) @ B``.
    """
    k, m = xty.shape
    weights_r = np.zeros((k, n_components))
    loadings_p = np.zeros((k, n_components))
    loadings_q = np.zeros((m, n_components))
    xty = xty.copy()
    largest = 0.0
    used = 0
    for a in range(n_components):
        if not np.any(xty):
            break
        w = _dominant_direction(xty)
        r = w - weights_r[:, :a] @ (loadings_p[:, :a].T @ w)
        xtx_r = xtx @ r
        tt = float(r @ xtx_r)
        largest = max(largest, tt)
        if tt <= 1e-12 * largest:
            break
        p = xtx_r / tt
        q = (r @ xty) / tt
        xty -= tt * np.outer(p, q)
        weights_r[:, a], loadings_p[:, a], loadings_q[:, a] = r, p, q
        used = a + 1
    return weights_r[:, :used] @ loadings_q[:, :used].T


def pls_split_predictions(x: np.ndarray, y: np.ndarray, splits: list[Split], n_components: int = 25) -> list[np.ndarray]:
    """Held-out PLS predictions (no scaling, centred X and Y) for every split.

    ``X^T X``, ``X^T Y`` and the column sums are computed once for all stimuli; each
    split's training Gram matrices are those minus its held-out rows, centred with
    the training means. Works for any split scheme (K-fold or shuffle splits).

    Parameters
    ----------
    x : (S, D) float
    y : (S, N) float
    splits : list of (train, test) indices

    Returns
    -------
    list of (n_test_k, N) float64 predictions, in the order of ``splits``.
    """
    # Centre once globally: PLS with centring is shift invariant, and the Gram
    # downdates below then subtract small numbers (no cancellation).
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    n = len(x)
    full_xtx = x.T @ x
    full_xty = x.T @ y
    predictions = []
    for train, test in splits:
        x_test, y_test = x[test], y[test]
        n_train = len(train)
        if n_train + len(test) == n:
            xtx = full_xtx - x_test.T @ x_test
            xty = full_xty - x_test.T @ y_test
            mean_x = -x_test.sum(axis=0) / n_train
            mean_y = -y_test.sum(axis=0) / n_train
        else:  # train and test do not cover the stimuli: Gram matrices of the training rows directly
            x_train, y_train = x[train], y[train]
            xtx, xty = x_train.T @ x_train, x_train.T @ y_train
            mean_x, mean_y = x_train.mean(axis=0), y_train.mean(axis=0)
        xtx = xtx - n_train * np.outer(mean_x, mean_x)
        xty = xty - n_train * np.outer(mean_x, mean_y)
        components = int(min(n_components, x.shape[1], n_train - 1))
        # The component loop is many small BLAS/LAPACK calls: multithreaded OpenBLAS
        # makes them up to 100x slower on a busy machine, so it runs single-threaded.
        with threadpool_limits(limits=1, user_api="blas"):
            coef = ikpls_coefficients(xtx, xty, components)
        predictions.append((x_test - mean_x) @ coef + mean_y)
    return predictions


def ikpls_split_predictions(x: np.ndarray, y: np.ndarray, splits: list[Split], n_components: int = 25) -> list[np.ndarray]:
    """The same predictions with the ``ikpls`` package (a cross-check of :func:`pls_split_predictions`)."""
    from ikpls.numpy import PLS

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    predictions = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for train, test in splits:
            components = int(min(n_components, x.shape[1], len(train) - 1))
            model = PLS(algorithm=2, center_X=True, center_Y=True, scale_X=False, scale_Y=False)
            model.fit(x[train], y[train], components)
            predictions.append(model.predict(x[test], n_components=components))
    return predictions


def ridge_split_predictions(x: np.ndarray, y: np.ndarray, splits: list[Split], alphas: Sequence[float]) -> list[np.ndarray]:
    """Held-out ridge predictions, the penalty chosen per neuroid by efficient leave-one-out on each training set."""
    from sklearn.linear_model import RidgeCV

    predictions = []
    for train, test in splits:
        model = RidgeCV(alphas=np.asarray(alphas, dtype=np.float64), alpha_per_target=True)
        model.fit(x[train], y[train])
        predictions.append(model.predict(x[test]))
    return predictions


def split_correlations(y: np.ndarray, splits: list[Split], predictions: list[np.ndarray]) -> np.ndarray:
    """Pearson r per (split, neuroid) of held-out predictions: (n_splits, N)."""
    return np.stack([pearson_columns(pred, y[test]) for (_, test), pred in zip(splits, predictions)])


def reference_split_r(
    x: np.ndarray, y: np.ndarray, splits: list[Split], n_components: int = 25, *, max_iter: int = 500, tol: float = 1e-6
) -> np.ndarray:
    """scikit-learn's ``PLSRegression(scale=False)`` split by split: (n_splits, N) Pearson r.

    The reference for correctness checks; ``max_iter``/``tol`` default to scikit-learn's
    (which often stop NIPALS early); pass large ``max_iter`` and tiny ``tol`` for the
    converged reference.
    """
    from sklearn.cross_decomposition import PLSRegression

    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for train, test in splits:
            components = int(min(n_components, x.shape[1], len(train) - 1))
            model = PLSRegression(n_components=components, scale=False, max_iter=max_iter, tol=tol)
            model.fit(x[train], y[train])
            rows.append(pearson_columns(model.predict(x[test]), y[test]))
    return np.stack(rows)


# ---------------------------------------------------------------- ceiling


def split_half_ceiling(presentations: np.ndarray, halvings: int = 10, *, seed: int) -> np.ndarray:
    """Spearman–Brown corrected split-half consistency per neuroid.

    Each halving draws a random permutation of the repetitions, averages each half
    (``R // 2`` repetitions each; with odd ``R`` one is left out), correlates the two
    half-means across stimuli per neuroid and corrects with Spearman–Brown (factor 2):
    an estimate of the reliability of the repetition average. Averaged over halvings.

    Parameters
    ----------
    presentations : (S, R, N) float, R >= 2

    Returns
    -------
    (N,) float64
    """
    p = np.asarray(presentations, dtype=np.float64)
    if p.ndim != 3 or p.shape[1] < 2:
        raise ValueError(f"split-half ceiling needs (stimuli, repetitions>=2, neuroids) responses, got shape {p.shape}")
    rng = derive_rng(seed, "neuro", "ceiling")
    half = p.shape[1] // 2
    total = np.zeros(p.shape[2])
    for _ in range(halvings):
        order = rng.permutation(p.shape[1])
        a = p[:, order[:half]].mean(axis=1)
        b = p[:, order[half:2 * half]].mean(axis=1)
        total += spearman_brown(pearson_columns(a, b))
    return total / halvings


# ---------------------------------------------------------------- scoring


@dataclass
class PredictivityResult:
    """Scores of one feature set against one region.

    ``split_r`` is (n_splits, N); everything else derives from it and the ceiling.
    """

    split_r: np.ndarray
    ceiling: np.ndarray
    n_components: int
    mapping: str
    bootstrap: dict = field(default_factory=dict)

    @property
    def neuroid_r(self) -> np.ndarray:
        return self.split_r.mean(axis=0)

    @property
    def raw(self) -> float:
        return float(np.median(self.neuroid_r))

    @property
    def split_scores(self) -> np.ndarray:
        return np.median(self.split_r, axis=1)

    @property
    def ceiling_median(self) -> float:
        return float(np.median(self.ceiling))

    @property
    def r_over_ceiling(self) -> float:
        return self.raw / self.ceiling_median if self.ceiling_median > 0 else float("nan")

    @property
    def r2_over_ceiling(self) -> float:
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(self.ceiling > 0, np.sign(self.neuroid_r) * self.neuroid_r**2 / self.ceiling, np.nan)
        return float(np.nanmedian(frac)) if np.isfinite(frac).any() else float("nan")

    def summary(self) -> dict:
        scores = self.split_scores
        return {
            "raw": self.raw,
            "ceiling": self.ceiling_median,
            "r_over_ceiling": self.r_over_ceiling,
            "r2_over_ceiling": self.r2_over_ceiling,
            "split_mean": float(scores.mean()),
            "split_std": float(scores.std(ddof=1)) if len(scores) > 1 else 0.0,
            "split_sem": float(scores.std(ddof=1) / np.sqrt(len(scores))) if len(scores) > 1 else 0.0,
            "split_scores": scores.tolist(),
            "neuroids": int(self.split_r.shape[1]),
            "mapping": self.mapping,
            "n_components": self.n_components,
            **self.bootstrap,
        }


def bootstrap_neuroids(neuroid_r: np.ndarray, ceiling: np.ndarray, n_boot: int, *, seed: int, level: float = 0.95) -> dict:
    """Percentile confidence intervals of the median r and of r/ceiling, resampling neuroids."""
    if n_boot <= 0:
        return {}
    rng = derive_rng(seed, "neuro", "bootstrap")
    idx = rng.integers(0, len(neuroid_r), size=(n_boot, len(neuroid_r)))
    raw = np.median(neuroid_r[idx], axis=1)
    ceil = np.median(ceiling[idx], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(ceil > 0, raw / ceil, np.nan)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {
        "raw_ci": [float(np.percentile(raw, lo)), float(np.percentile(raw, hi))],
        "r_over_ceiling_ci": [float(np.nanpercentile(norm, lo)), float(np.nanpercentile(norm, hi))] if np.isfinite(norm).any() else [None, None],
        "ci_level": level,
        "bootstrap": int(n_boot),
    }


def score_predictivity(
    features: np.ndarray,
    responses: np.ndarray,
    splits: list[Split],
    ceiling: np.ndarray,
    *,
    mapping: str = "pls",
    n_components: int = 25,
    ridge_alphas: Sequence[float] = (1.0,),
    bootstrap: int = 1000,
    seed: int,
) -> PredictivityResult:
    """Cross-validated predictivity of ``features`` (S, D) for ``responses`` (S, N) (repetition-averaged)."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(responses, dtype=np.float64)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"features have {x.shape[0]} stimuli but responses have {y.shape[0]}")
    if mapping == "pls":
        predictions = pls_split_predictions(x, y, splits, n_components)
        used = int(min(n_components, x.shape[1], min(len(tr) for tr, _ in splits) - 1))
    elif mapping == "ridge":
        predictions = ridge_split_predictions(x, y, splits, ridge_alphas)
        used = 0
    else:
        raise ValueError(f"mapping: unknown {mapping!r} (known: pls, ridge)")
    split_r = split_correlations(y, splits, predictions)
    result = PredictivityResult(split_r=split_r, ceiling=np.asarray(ceiling, dtype=np.float64), n_components=used, mapping=mapping)
    result.bootstrap = bootstrap_neuroids(result.neuroid_r, result.ceiling, bootstrap, seed=seed)
    return result


