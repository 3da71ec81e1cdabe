"""Neural predictivity: cross-validated linear mapping from features to responses.

The protocol (one place, as Brain-Score's ``NeuralBenchmark``): optional PCA of the
features, a mapping (PLS with 25 components and no scaling, or ridge) fitted on the
training stimuli of each split to the repetition-averaged responses, Pearson r per
neuroid on the held-out stimuli, median over neuroids, and a noise ceiling over
repetitions (mean pairwise single-repetition r, Spearman–Brown corrected to all
repetitions). Brain-Score's own aggregate, ceiling and normalisation are reported
alongside (:meth:`PredictivityResult.brainscore`).

PLS is Improved Kernel PLS (Dayal & MacGregor's algorithm 2, as in the ``ikpls``
package, which the tests use as a cross-check): ``X^T X`` and ``Y^T X`` are computed
once for all stimuli and every split's training products are those minus the rows
it leaves out; every fit is multi-target, so all neuroids of a region share one
decomposition, and all splits are fitted together, one batched step per component.
Each weight vector is computed exactly (a dominant singular vector, by Lanczos on a
Gram matrix that deflation only changes by rank 2) where scikit-learn's NIPALS
iterates towards it, so the result agrees with a NIPALS run to convergence
(:func:`reference_split_r`), not necessarily with one stopped at ``max_iter``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from services.common.seeds import derive_rng, derive_seed

Split = tuple[np.ndarray, np.ndarray]
NORMALISATION = (
    "this project: r_over_ceiling = median over neuroids of Pearson r (averaged over splits) divided by the median "
    "noise ceiling (reliability of the repetition mean: mean pairwise single-repetition r, Spearman-Brown corrected "
    "to all repetitions); r2_over_ceiling = median over neuroids of r^2 / ceiling (fraction of explainable variance). "
    "Brain-Score (the 'brainscore' block, its names, computed its way): raw = mean over splits of each split's median r "
    "over neuroids; ceiling = its split-half internal consistency (repetitions halved by ShuffleSplit(10, train_size=0.5, "
    "random_state=1), Spearman-Brown factor 2, median over neuroids, mean over halvings); score = raw^2 / ceiling "
    "(explained_variance, Brain-Score vision 2.x); error = s.e.m. of the split medians (ddof 0)"
)
# Brain-Score's cross-validation: Split.Defaults.random_state and CrossRegressedCorrelation's train_size.
BRAINSCORE_RANDOM_STATE = 1
SPLIT_FILE_FORMAT = "flatland-splits"


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
        Object/category label of each stimulus, in the order of the data set's stimuli.
    scheme : {"stratified_kfold", "brainscore"}
        ``stratified_kfold``: every stimulus is held out exactly once (the proposal's
        protocol), shuffled with a state derived from ``seed``. ``brainscore``:
        Brain-Score's own splits, ``StratifiedShuffleSplit(n_splits,
        train_size=1 - test_fraction, random_state=1)`` on the object labels (its
        ``CrossRegressedCorrelation`` defaults: 10 splits, train_size 0.9); ``seed``
        is not used, so the splits equal Brain-Score's for the same stimulus order.
    seed : int
        Root seed of the ``stratified_kfold`` shuffle.

    Returns
    -------
    list of (train (n_train,) int, test (n_test,) int), indices sorted.
    """
    from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit

    labels = np.asarray(objects).astype(str)
    if scheme == "stratified_kfold":
        if n_splits > len(labels):
            raise ValueError(f"n_splits ({n_splits}) exceeds the number of stimuli ({len(labels)})")
        state = derive_seed(seed, "neuro", "splits", scheme) % (2**32)
        splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=state)
    elif scheme == "brainscore":
        # Brain-Score passes train_size=.9, test_size=None; sklearn then sizes the test set as the rest.
        splitter = StratifiedShuffleSplit(n_splits=n_splits, train_size=1.0 - test_fraction, test_size=None,
                                          random_state=BRAINSCORE_RANDOM_STATE)
    else:
        raise ValueError(f"splits: unknown scheme {scheme!r} (known: stratified_kfold, brainscore, file)")
    with warnings.catch_warnings():
        # Objects with fewer stimuli than folds are still placed; sklearn warns about it.
        warnings.simplefilter("ignore", UserWarning)
        return [(np.sort(tr), np.sort(te)) for tr, te in splitter.split(np.zeros(len(labels)), labels)]


def read_split_file(source: str | bytes | dict, stimulus_ids: Sequence[str] | np.ndarray, *, name: str = "split file") -> list[Split]:
    """Explicit splits from a JSON split file (format in docs/neuro-scoring.md).

    ``{"format": "flatland-splits", "splits": [{"train": [...], "test": [...]}, ...]}``;
    each entry is either all stimulus ids (strings, matched to ``/stimuli/id``) or all
    0-based indices into the data set's stimulus order (integers). A stimulus may be in
    neither set of a split, never in both.

    Parameters
    ----------
    source : JSON text or bytes, or the parsed dict
    stimulus_ids : (S,) str, the data set's stimulus ids in order

    Raises
    ------
    ValueError
        Naming the file, the split and what is wrong (not JSON, wrong format tag, empty
        or overlapping sets, unknown ids, indices out of range, duplicates).
    """
    import json

    if isinstance(source, dict):
        doc = source
    else:
        try:
            doc = json.loads(source)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{name}: not a JSON split file ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != SPLIT_FILE_FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"{name}: expected a JSON object with \"format\": \"{SPLIT_FILE_FORMAT}\", got format {got!r}")
    entries = doc.get("splits")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{name}: \"splits\" must be a non-empty list of {{\"train\": [...], \"test\": [...]}} objects")
    ids = np.asarray(stimulus_ids).astype(str)
    position = {sid: i for i, sid in enumerate(ids)}
    splits: list[Split] = []
    for k, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) - {"train", "test"} or not {"train", "test"} <= set(entry):
            raise ValueError(f"{name}: split {k} must be an object with exactly the keys 'train' and 'test'")
        pair = []
        for part in ("train", "test"):
            values = entry[part]
            if not isinstance(values, list) or len(values) < 2:
                # A Pearson r over the held-out stimuli needs two of them; a fit needs two too.
                raise ValueError(f"{name}: split {k} {part} must list at least 2 stimulus ids or indices")
            if all(isinstance(v, str) for v in values):
                unknown = [v for v in values if v not in position]
                if unknown:
                    raise ValueError(f"{name}: split {k} {part} names {len(unknown)} stimulus id(s) not in the data set, "
                                     f"e.g. {unknown[:5]}")
                index = np.asarray([position[v] for v in values], dtype=np.int64)
            elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                index = np.asarray(values, dtype=np.int64)
                bad = index[(index < 0) | (index >= len(ids))]
                if bad.size:
                    raise ValueError(f"{name}: split {k} {part} has indices outside 0..{len(ids) - 1}, e.g. {bad[:5].tolist()}")
            else:
                raise ValueError(f"{name}: split {k} {part} must be all stimulus ids (strings) or all indices (integers)")
            if len(np.unique(index)) != len(index):
                raise ValueError(f"{name}: split {k} {part} lists a stimulus more than once")
            pair.append(np.sort(index))
        both = np.intersect1d(pair[0], pair[1])
        if both.size:
            raise ValueError(f"{name}: split {k} has {both.size} stimulus/stimuli in both train and test, "
                             f"e.g. {ids[both[:5]].tolist()}")
        splits.append((pair[0], pair[1]))
    return splits


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


def reduce_pca(features: np.ndarray, n_components: int | None, *, seed: int, fit_on: np.ndarray | None = None) -> np.ndarray:
    """PCA of the features to ``n_components`` (no-op when off or already that small).

    Fitted on ``fit_on`` (features of a separate image set, as Brain-Score fits its 1000
    components on ImageNet validation images) when given, else on all stimuli of the set
    (unsupervised: no responses involved), and applied to ``features``.

    Returns
    -------
    (S, min(D, n_components, fit rows)) float64
    """
    x = np.asarray(features, dtype=np.float64)
    if n_components is None or x.shape[1] <= n_components:
        return x
    from sklearn.decomposition import PCA

    fit = x if fit_on is None else np.asarray(fit_on, dtype=np.float64)
    if fit.shape[1] != x.shape[1]:
        raise ValueError(f"PCA fit set has {fit.shape[1]} features per image but the stimuli have {x.shape[1]}")
    k = min(n_components, fit.shape[0])
    pca = PCA(n_components=k, svd_solver="randomized" if k < 0.8 * min(fit.shape) else "full",
              random_state=derive_seed(seed, "neuro", "pca") % (2**32))
    # Small decompositions are much faster single-threaded on a busy machine (OpenBLAS contention).
    with threadpool_limits(limits=1 if fit.size < 4_000_000 else None, user_api="blas"):
        if fit_on is None:
            return pca.fit_transform(x)
        return pca.fit(fit).transform(x)


def _single_threaded_blas():
    """Context limiting BLAS to one thread (cached controller: building one scans every loaded library)."""
    return _blas_controller().limit(limits=1, user_api="blas")


@functools.cache
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _top_eigenvectors(gram: np.ndarray, active: np.ndarray, *, first_check: int, tol: float = 1e-12) -> tuple[np.ndarray, np.ndarray, int]:
    """Dominant eigenpair of each symmetric PSD matrix in a batch, by Lanczos.

    One Lanczos run per matrix, all in lockstep (each step is one batched
    matrix-vector product), with full reorthogonalisation (so the Krylov basis stays
    orthonormal and ``n`` steps are exact). Stops when every active matrix's Ritz
    residual ``|beta_m y_m|`` is below ``tol`` times its Ritz value. The start vector
    is a fixed pseudo-random one, so no eigenvector is missed by symmetry.

    Parameters
    ----------
    gram : (B, n, n) float64, symmetric positive semi-definite
    active : (B,) bool; inactive matrices do not hold the others back
    first_check : first step at which convergence is tested (then every 4 steps)

    Returns
    -------
    vectors (B, n) unit, values (B,), steps taken
    """
    batch, n, _ = gram.shape
    basis = np.zeros((batch, n + 1, n))
    start = np.random.default_rng(0).normal(size=n)
    basis[:, 0] = start / np.linalg.norm(start)
    alpha = np.zeros((batch, n))
    beta = np.zeros((batch, n))
    for j in range(n):
        q = basis[:, j]
        w = (gram @ q[:, :, None])[:, :, 0]
        alpha[:, j] = np.einsum("bi,bi->b", w, q)
        done = basis[:, : j + 1]
        for _ in range(2):  # classical Gram-Schmidt, twice ("twice is enough")
            w -= (np.swapaxes(done, 1, 2) @ (done @ w[:, :, None]))[:, :, 0]
        norm = np.sqrt(np.einsum("bi,bi->b", w, w))
        beta[:, j] = norm
        m = j + 1
        if (m >= first_check and (m - first_check) % 4 == 0) or m == n or not norm[active].all():
            tri = np.zeros((batch, m, m))
            diag = np.arange(m)
            tri[:, diag, diag] = alpha[:, :m]
            tri[:, diag[:-1], diag[1:]] = tri[:, diag[1:], diag[:-1]] = beta[:, : m - 1]
            values, vectors = np.linalg.eigh(tri)
            ritz = vectors[:, :, -1]
            residual = np.abs(norm * ritz[:, -1])
            converged = residual <= tol * np.maximum(values[:, -1], np.finfo(float).tiny)
            if m == n or converged[active].all():
                return (ritz[:, None, :] @ basis[:, :m])[:, 0], values[:, -1], m
        basis[:, j + 1] = w / np.where(norm > 0, norm, 1.0)[:, None]
    raise AssertionError("unreachable: n Lanczos steps always return")


def _combine(left: np.ndarray, right: np.ndarray, v: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
    """Batched ``sum_i scale_i (left_i . v) right_i`` over the stored components.

    left (B, a, n), right (B, a, k), v (B, n), scale (B, a) or None -> (B, k).
    """
    coeffs = (left @ v[:, :, None])[:, :, 0]
    if scale is not None:
        coeffs = coeffs * scale
    return (coeffs[:, None, :] @ right)[:, 0]


def _ikpls_batch(
    full_xtx: np.ndarray, ytx: np.ndarray, removed_x: list[np.ndarray], mean_x: np.ndarray, n_train: np.ndarray, n_components: int
) -> tuple[np.ndarray, np.ndarray]:
    """Improved Kernel PLS (Dayal & MacGregor, algorithm 2) for a batch of training sets, in lockstep.

    Split ``s``'s centred training Gram is ``full_xtx - removed_x[s]^T removed_x[s] -
    n_train[s] mean_x[s] mean_x[s]^T``; it is only ever applied to vectors, so no
    K×K matrix per split is formed. Each weight vector (the dominant left singular
    vector of the deflated ``X^T Y``) comes from the dominant eigenvector of the
    smaller of ``(X^T Y)^T (X^T Y)`` (M×M) and ``(X^T Y)(X^T Y)^T`` (K×K), which
    deflation changes by a rank-2 update, so that Gram matrix is formed once per split
    and updated in place. ``X^T Y`` itself is never deflated: since ``r_a^T p_i = 0``
    for ``i < a``, ``q_a = r_a^T (X^T Y)_0 / t_a^T t_a`` and the deflated products
    follow from the stored loadings.

    Parameters
    ----------
    full_xtx : (K, K) ``X^T X`` of all (globally centred) stimuli
    ytx : (B, M, K) centred training ``Y^T X`` per split
    removed_x : B arrays (n_removed, K): the rows not in each training set
    mean_x : (B, K) training means (of the globally centred features)
    n_train : (B,) training-set sizes

    Returns
    -------
    weights_r (B, A, K), loadings_q (B, A, M): centred predictions are ``x R^T Q``.
    """
    batch, m, k = ytx.shape
    weights_r = np.zeros((batch, n_components, k))
    loadings_p = np.zeros((batch, n_components, k))
    loadings_q = np.zeros((batch, n_components, m))
    score_ss = np.zeros((batch, n_components))  # t_a^T t_a
    response_side = m <= k
    gram = ytx @ np.swapaxes(ytx, 1, 2) if response_side else np.swapaxes(ytx, 1, 2) @ ytx
    active = np.ones(batch, dtype=bool)
    largest = np.zeros(batch)
    steps = 4
    for a in range(n_components):
        v, top, steps = _top_eigenvectors(gram, active, first_check=max(4, steps - 4))
        active &= top > 0
        if response_side:  # w ∝ (X^T Y)_a v = (X^T Y)_0 v - sum_i t_i^T t_i p_i (q_i . v)
            w = (v[:, None, :] @ ytx)[:, 0]
            w -= _combine(loadings_q[:, :a], loadings_p[:, :a], v, score_ss[:, :a])
            w /= np.maximum(np.linalg.norm(w, axis=1, keepdims=True), np.finfo(float).tiny)
        else:
            w = v
        r = w - _combine(loadings_p[:, :a], weights_r[:, :a], w)
        xtx_r = (full_xtx @ r.T).T
        for s, rows in enumerate(removed_x):
            xtx_r[s] -= (rows @ r[s]) @ rows
        xtx_r -= (n_train * np.einsum("bk,bk->b", mean_x, r))[:, None] * mean_x
        tt = np.einsum("bk,bk->b", r, xtx_r)
        largest = np.maximum(largest, tt)
        # Past the rank of X the score variance vanishes: that split stops (fewer components).
        active &= tt > 1e-12 * largest
        tt_safe = np.where(active, tt, 1.0)
        p = xtx_r / tt_safe[:, None]
        products = ytx @ np.stack([r, p], axis=2)  # (B, M, 2): Y^T X r and Y^T X p
        q = products[:, :, 0] / tt_safe[:, None]
        r[~active], p[~active], q[~active] = 0.0, 0.0, 0.0
        if response_side:  # u = (X^T Y)_a^T p; C <- C - tt (q u^T + u q^T) + tt^2 |p|^2 q q^T
            u = products[:, :, 1] - _combine(loadings_p[:, :a], loadings_q[:, :a], p, score_ss[:, :a])
            basis2, diagonal, off = np.stack([q, u], axis=2), tt * tt * np.einsum("bk,bk->b", p, p), -tt
        else:  # g = G r; G <- (I - p r^T) G (I - r p^T) = G - p g^T - g p^T + (r.g) p p^T
            g = (gram @ r[:, :, None])[:, :, 0]
            basis2, diagonal, off = np.stack([p, g], axis=2), np.einsum("bk,bk->b", r, g), -np.ones(batch)
        coef = np.zeros((batch, 2, 2))  # gram += basis2 @ [[diagonal, off], [off, 0]] @ basis2^T
        coef[:, 0, 0], coef[:, 0, 1], coef[:, 1, 0] = diagonal, off, off
        coef[~active] = 0.0
        gram += (basis2 @ coef) @ np.swapaxes(basis2, 1, 2)
        weights_r[:, a], loadings_p[:, a], loadings_q[:, a], score_ss[:, a] = r, p, q, np.where(active, tt, 0.0)
        if not active.any():
            break
    return weights_r, loadings_q


def pls_component_count(n_components: int, n_features: int, splits: list[Split]) -> int:
    """Components actually fitted: clipped to the features and to the smallest training set minus one."""
    return int(min(n_components, n_features, min(len(train) for train, _ in splits) - 1))


def pls_split_predictions(x: np.ndarray, y: np.ndarray, splits: list[Split], n_components: int = 25) -> list[np.ndarray]:
    """Held-out PLS predictions (no scaling, centred X and Y) for every split.

    ``X^T X`` and ``Y^T X`` are computed once for all stimuli; each split's training
    products are those minus the rows it leaves out, centred with the training means,
    and all splits are fitted together (:func:`_ikpls_batch`). Works for any split
    scheme (K-fold or shuffle splits). With more features than stimuli the features
    are first rotated into the stimuli's span (``U S`` of the thin SVD), which PLS
    predictions do not change, so no K×K matrix larger than S×S is formed.

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
    n, k = x.shape
    if k > n:
        u, singular, _ = np.linalg.svd(x, full_matrices=False)
        x = u * singular
    full_xtx = x.T @ x
    full_ytx = y.T @ x
    everything = np.arange(n)
    components = pls_component_count(n_components, x.shape[1], splits)
    # Splits are fitted in batches that keep the per-split Y^T X copies under ~256 MB.
    batch_size = max(1, min(len(splits), (1 << 25) // max(1, y.shape[1] * x.shape[1])))
    predictions = []
    for first in range(0, len(splits), batch_size):
        batch = splits[first:first + batch_size]
        removed_x, ytx, mean_x, mean_y = [], np.empty((len(batch), y.shape[1], x.shape[1])), [], []
        n_train = np.array([len(train) for train, _ in batch], dtype=np.float64)
        for s, (train, _) in enumerate(batch):
            removed = np.setdiff1d(everything, train, assume_unique=True)
            x_removed, y_removed = x[removed], y[removed]
            # Training means of the globally centred data: minus the removed rows' sum.
            mean_x.append(-x_removed.sum(axis=0) / n_train[s])
            mean_y.append(-y_removed.sum(axis=0) / n_train[s])
            # Centred training Y^T X = full - (y_removed - mean_y)^T x_removed
            np.subtract(full_ytx, (y_removed - mean_y[s]).T @ x_removed, out=ytx[s])
            removed_x.append(x_removed)
        # The component loop is many small BLAS calls: multithreaded OpenBLAS makes
        # them up to 100x slower on a busy machine, so it runs single-threaded.
        with _single_threaded_blas():
            weights_r, loadings_q = _ikpls_batch(full_xtx, ytx, removed_x, np.stack(mean_x), n_train, components)
        for s, (_, test) in enumerate(batch):
            predictions.append(((x[test] - mean_x[s]) @ weights_r[s].T) @ loadings_q[s] + mean_y[s])
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


def mean_pairwise_r(presentations: np.ndarray) -> np.ndarray:
    """Mean Pearson r across stimuli between every pair of single repetitions, per neuroid.

    All ``R (R - 1) / 2`` pairs at once: with ``z_i`` the standardised repetition ``i``,
    ``sum_{i != j} z_i . z_j = |sum_i z_i|^2 - sum_i |z_i|^2``. A constant repetition
    counts as r = 0 with every other, as :func:`pearson_columns` does.

    Parameters
    ----------
    presentations : (S, R, N) float, R >= 2

    Returns
    -------
    (N,) float64, at least ``-1 / (R - 1)``.
    """
    p = np.asarray(presentations, dtype=np.float64)
    if p.ndim != 3 or p.shape[1] < 2:
        raise ValueError(f"a noise ceiling needs (stimuli, repetitions>=2, neuroids) responses, got shape {p.shape}")
    s, r, _ = p.shape
    centred = p - p.mean(axis=0, keepdims=True)
    norm = np.sqrt((centred * centred).sum(axis=0, keepdims=True))
    z = np.divide(centred, norm, out=np.zeros_like(centred), where=norm > 0)  # unit columns: z_i . z_j = r_ij
    total = z.sum(axis=1)
    cross = (total * total).sum(axis=0) - (z * z).sum(axis=(0, 1))
    return cross / (r * (r - 1))


def reliability_ceiling(presentations: np.ndarray) -> np.ndarray:
    """Noise ceiling per neuroid: the reliability of the mean over all ``R`` repetitions.

    The mean Pearson r between single repetitions estimates the reliability of one
    repetition; Spearman–Brown with factor ``R`` turns it into that of the ``R``-mean.
    Unlike a split-half estimate this uses every repetition for any ``R`` (a split half
    with odd ``R`` leaves one out and corrects by 2, estimating the reliability of an
    ``R - 1`` mean: with 3 repetitions, 0.65 for a true 0.74). Deterministic.

    Parameters
    ----------
    presentations : (S, R, N) float, R >= 2

    Returns
    -------
    (N,) float64
    """
    return spearman_brown(mean_pairwise_r(presentations), factor=np.asarray(presentations).shape[1])


def brainscore_internal_consistency(presentations: np.ndarray, n_splits: int = 10) -> dict:
    """Brain-Score's ceiling, computed its way (``InternalConsistency``, brainscore_vision metrics).

    ``ShuffleSplit(n_splits, train_size=0.5, random_state=1)`` over the repetitions
    picks two halves (with odd ``R``: ``R // 2`` against the rest); each half is
    averaged over its repetitions, Pearson r per neuroid between the half means,
    Spearman–Brown with factor 2, median over neuroids; the ceiling is the mean of
    those medians over the halvings.

    Returns
    -------
    dict: ``ceiling`` (float), ``split_ceilings`` (one median per halving), ``neuroids``
    ((N,) per-neuroid values averaged over halvings, as its raw attribute).
    """
    from sklearn.model_selection import ShuffleSplit

    p = np.asarray(presentations, dtype=np.float64)
    if p.ndim != 3 or p.shape[1] < 2:
        raise ValueError(f"a noise ceiling needs (stimuli, repetitions>=2, neuroids) responses, got shape {p.shape}")
    halver = ShuffleSplit(n_splits=n_splits, train_size=0.5, test_size=None, random_state=BRAINSCORE_RANDOM_STATE)
    per_split = np.stack([spearman_brown(pearson_columns(p[:, a].mean(axis=1), p[:, b].mean(axis=1)), 2.0)
                          for a, b in halver.split(np.zeros(p.shape[1]))])
    medians = np.median(per_split, axis=1)
    return {"ceiling": float(medians.mean()), "split_ceilings": medians.tolist(), "neuroids": per_split.mean(axis=0)}


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
    brainscore_ceiling: float | None = None  # Brain-Score's internal consistency of the region (its aggregate)

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

    def brainscore(self) -> dict:
        """Brain-Score's numbers under its names, computed its way (``CrossRegressedCorrelation`` + ``explained_variance``).

        ``raw``: mean over splits of each split's median r over neuroids; ``error``: the
        s.e.m. of those medians (xarray's ``std``, ddof 0, over sqrt(splits)); ``ceiling``:
        :func:`brainscore_internal_consistency`; ``score``: ``raw^2 / ceiling``.
        """
        scores = self.split_scores
        raw = float(scores.mean())
        ceiling = self.brainscore_ceiling
        return {
            "raw": raw,
            "error": float(scores.std() / np.sqrt(len(scores))),
            "ceiling": ceiling,
            "score": raw**2 / ceiling if ceiling else None,
        }

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
            "brainscore": self.brainscore(),
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
    brainscore_ceiling: float | None = None,
) -> PredictivityResult:
    """Cross-validated predictivity of ``features`` (S, D) for ``responses`` (S, N) (repetition-averaged).

    ``ceiling`` is this project's per-neuroid ceiling; ``brainscore_ceiling`` Brain-Score's
    aggregate one (for the ``brainscore`` block of the summary).
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(responses, dtype=np.float64)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"features have {x.shape[0]} stimuli but responses have {y.shape[0]}")
    if mapping == "pls":
        predictions = pls_split_predictions(x, y, splits, n_components)
        used = pls_component_count(n_components, x.shape[1], splits)
    elif mapping == "ridge":
        predictions = ridge_split_predictions(x, y, splits, ridge_alphas)
        used = 0
    else:
        raise ValueError(f"mapping: unknown {mapping!r} (known: pls, ridge)")
    split_r = split_correlations(y, splits, predictions)
    result = PredictivityResult(split_r=split_r, ceiling=np.asarray(ceiling, dtype=np.float64), n_components=used, mapping=mapping,
                                brainscore_ceiling=brainscore_ceiling)
    result.bootstrap = bootstrap_neuroids(result.neuroid_r, result.ceiling, bootstrap, seed=seed)
    return result


