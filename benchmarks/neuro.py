"""neuro: time to score one layer by cross-validated PLS, against scikit-learn.

Problem (the issue's size): 1,000 features × 2,560 stimuli × 256 neuroids, 10 splits
(stratified 10-fold by object, 64 objects × 40 stimuli), PLS with 25 components and
no scaling, Pearson r per neuroid on held-out stimuli. Features are synthetic
(Gaussian with a power-law spectrum, like a PCA-reduced CNN layer); responses are a
random linear map of them plus noise (reliability about 0.6).

Timed:

- ``seconds``: :func:`services.neuro.predictivity.pls_split_predictions` +
  per-neuroid r for all 10 splits (median over ``--repeats``);
- ``reference_seconds``: scikit-learn ``PLSRegression(n_components=25, scale=False)``
  with default ``max_iter``/``tol``, fitted split by split, same splits, same r;
- ``ratio`` = reference_seconds / seconds;
- ``max_abs_diff``: max |r_ours − r_converged| over splits × neuroids, where the
  converged reference is the same scikit-learn model with ``max_iter=100000``,
  ``tol=1e-14`` (on ``--converged-splits`` splits, all 10 by default);
- ``default_vs_converged_max_abs_diff``: how far default scikit-learn is from converged.

Target (issue 6): ratio >= 20, max_abs_diff <= 1e-4. The references take minutes on a
busy 2-core machine. Prints readable lines, then LAST one JSON line.

Run: ``.venv/bin/python benchmarks/neuro.py [--repeats 3] [--converged-splits 10]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

from services.common.seeds import derive_rng
from services.neuro.predictivity import make_splits, pls_split_predictions, reference_split_r, split_correlations

STIMULI, FEATURES, NEUROIDS, OBJECTS, SPLITS, COMPONENTS = 2560, 1000, 256, 64, 10, 25


def make_problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = derive_rng(seed, "bench-neuro")
    spectrum = 1.0 / np.sqrt(1.0 + np.arange(FEATURES))
    rotation = np.linalg.qr(rng.normal(size=(FEATURES, FEATURES)))[0]
    features = (rng.normal(size=(STIMULI, FEATURES)) * spectrum) @ rotation + rng.uniform(0, 2, size=FEATURES)
    signal = (features - features.mean(0)) @ rng.normal(size=(FEATURES, NEUROIDS))
    signal /= signal.std(axis=0)
    responses = signal + rng.normal(scale=0.8, size=(STIMULI, NEUROIDS))
    objects = np.repeat([f"object-{k:02d}" for k in range(OBJECTS)], STIMULI // OBJECTS)
    return features, responses, objects


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--converged-splits", type=int, default=SPLITS)
    args = parser.parse_args()

    x, y, objects = make_problem()
    splits = make_splits(objects, "stratified_kfold", SPLITS, seed=0)
    print(f"problem: {STIMULI} stimuli x {FEATURES} features -> {NEUROIDS} neuroids, {SPLITS} splits, "
          f"PLS {COMPONENTS} components; {os.cpu_count()} CPUs")

    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = split_correlations(y, splits, pls_split_predictions(x, y, splits, COMPONENTS))
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    print(f"ours (batched IKPLS): {seconds:.2f} s median of {times}; median r {np.median(ours.mean(0)):.4f}")

    start = time.perf_counter()
    default = reference_split_r(x, y, splits, COMPONENTS)
    reference_seconds = time.perf_counter() - start
    print(f"scikit-learn default (max_iter=500, tol=1e-6), split by split: {reference_seconds:.1f} s")

    used = splits[: args.converged_splits]
    start = time.perf_counter()
    converged = reference_split_r(x, y, used, COMPONENTS, max_iter=100_000, tol=1e-14)
    converged_seconds = time.perf_counter() - start
    k = len(used)
    max_abs_diff = float(np.abs(ours[:k] - converged).max())
    default_diff = float(np.abs(default[:k] - converged).max())
    print(f"scikit-learn converged (max_iter=100000, tol=1e-14) on {k} splits: {converged_seconds:.1f} s")
    print(f"max |r_ours - r_converged| = {max_abs_diff:.2e}; max |r_default - r_converged| = {default_diff:.2e}; "
          f"max |r_ours - r_default| = {float(np.abs(ours - default).max()):.2e}")
    print(json.dumps({
        "benchmark": "neuro_pls_one_layer", "stimuli": STIMULI, "features": FEATURES, "neuroids": NEUROIDS,
        "splits": SPLITS, "components": COMPONENTS, "seconds": round(seconds, 3),
        "reference_seconds": round(reference_seconds, 3), "ratio": round(reference_seconds / seconds, 2),
        "max_abs_diff": max_abs_diff, "default_vs_converged_max_abs_diff": default_diff,
        "converged_splits": k, "converged_reference_seconds": round(converged_seconds, 3),
        "target_ratio": 20, "target_max_abs_diff": 1e-4,
    }))


if __name__ == "__main__":
    main()
