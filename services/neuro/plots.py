"""Figures for people: predictivity by layer per region, RDM heat maps, model–model RSA (PNG bytes, matplotlib Agg)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from services.neuro.rsa import square  # noqa: E402


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def predictivity_figure(scores: Mapping, title: str) -> bytes:
    """One panel per region: median Pearson r per layer (bootstrap CI over neuroids), the
    ceiling, and r/ceiling.

    ``scores`` is the score JSON's ``predictivity`` mapping: region → layer → summary.
    """
    regions = list(scores)
    fig, axes = plt.subplots(1, len(regions), figsize=(4.2 * len(regions), 3.4), squeeze=False)
    for ax, region in zip(axes[0], regions):
        layers = list(scores[region])
        raw = np.array([scores[region][l]["raw"] for l in layers])
        ci = np.array([scores[region][l].get("raw_ci", [v, v]) for l, v in zip(layers, raw)], dtype=float)
        ceiling = scores[region][layers[0]]["ceiling"]
        x = np.arange(len(layers))
        ax.errorbar(x, raw, yerr=[raw - ci[:, 0], ci[:, 1] - raw], marker="o", capsize=3, label="median r (95% CI)")
        ax.axhline(ceiling, color="grey", ls="--", label=f"ceiling {ceiling:.2f}")
        ax.axhline(np.sqrt(max(ceiling, 0)), color="grey", ls=":", label="sqrt(ceiling)")
        best = int(np.argmax(raw))
        ax.plot([best], [raw[best]], marker="*", ms=14, color="C3", ls="none", label=f"best: {layers[best]}")
        ax.set_xticks(x, layers, rotation=30, ha="right")
        ax.set_ylabel("held-out Pearson r")
        ax.set_title(f"{region} ({scores[region][layers[0]]['neuroids']} neuroids)")
        ax.set_ylim(min(0.0, float(raw.min()) - 0.05), 1.0)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10, y=1.04)
    return _png(fig)


def rdm_figure(rdms: Mapping[str, np.ndarray], order: np.ndarray, title: str) -> bytes:
    """Heat maps of condensed RDMs (name → (S(S-1)/2,)), stimuli reordered by ``order`` (e.g. by object)."""
    names = list(rdms)
    cols = min(4, len(names))
    rows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, name in zip(axes.ravel(), names):
        matrix = square(rdms[name])[np.ix_(order, order)]
        # Rank-transform for display: RSA compares ranks, and ranks share one colour scale.
        ranks = np.argsort(np.argsort(matrix, axis=None)).reshape(matrix.shape) / matrix.size
        ax.imshow(ranks, cmap="viridis", interpolation="nearest")
        ax.set_title(name, fontsize=8)
    fig.suptitle(title + " (dissimilarity percentile; stimuli sorted by object)", fontsize=9)
    return _png(fig)


def model_model_figure(similarity: np.ndarray, layers_a: Sequence[str], layers_b: Sequence[str],
                       label_a: str, label_b: str, method: str) -> bytes:
    """Layer × layer RSA matrix between two models."""
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(layers_b), 1.0 + 0.6 * len(layers_a)))
    im = ax.imshow(similarity, cmap="magma", vmin=min(0.0, float(np.nanmin(similarity))), vmax=1.0)
    ax.set_xticks(range(len(layers_b)), layers_b, rotation=30, ha="right")
    ax.set_yticks(range(len(layers_a)), layers_a)
    ax.set_xlabel(label_b, fontsize=8)
    ax.set_ylabel(label_a, fontsize=8)
    for i in range(similarity.shape[0]):
        for j in range(similarity.shape[1]):
            ax.text(j, i, f"{similarity[i, j]:.2f}", ha="center", va="center", fontsize=6, color="white")
    fig.colorbar(im, ax=ax, label=f"RDM similarity ({method})")
    return _png(fig)
