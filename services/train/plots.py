"""Pictures for people: first-layer filters and training curves (matplotlib, Agg backend)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from services.train.models import first_conv, unwrap  # noqa: E402


def filter_grid(model: nn.Module, *, scale: int = 8) -> np.ndarray:
    """The first convolution's filters as one image, each filter min-max scaled on its own.

    Returns
    -------
    (H, W, 3) uint8
        Filters with 3 input channels show as colour; others show their channel mean in grey.
    """
    conv = first_conv(unwrap(model))
    if conv is None:
        raise ValueError("the model has no Conv2d layer to draw")
    weight = conv.weight.detach().float().cpu()  # (out, in, kh, kw)
    if weight.shape[1] != 3:
        weight = weight.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    low = weight.amin(dim=(1, 2, 3), keepdim=True)
    high = weight.amax(dim=(1, 2, 3), keepdim=True)
    weight = (weight - low) / (high - low).clamp_min(1e-12)
    weight = torch.nn.functional.interpolate(weight, scale_factor=scale, mode="nearest")
    nrow = int(np.ceil(np.sqrt(weight.shape[0])))
    grid = make_grid(weight, nrow=nrow, padding=scale // 2, pad_value=1.0)
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def filters_png(model: nn.Module, title: str = "") -> bytes:
    grid = filter_grid(model)
    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title or "first-layer filters", fontsize=9)
    return _png(fig)


def curves_png(records: Sequence[dict], title: str = "") -> bytes:
    """Loss and top-1 per epoch, train and val, from ``metrics.jsonl`` records."""
    epochs = [r["epoch"] for r in records]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for split, style in (("train", "-o"), ("val", "--s")):
        loss = [r.get(f"{split}_loss") for r in records]
        top1 = [r.get(f"{split}_top1") for r in records]
        if any(v is not None for v in loss):
            loss_ax.plot(epochs, [np.nan if v is None else v for v in loss], style, label=split, markersize=3)
            acc_ax.plot(epochs, [np.nan if v is None else 100 * v for v in top1], style, label=split, markersize=3)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("cross-entropy loss (log scale)")
    loss_ax.set_yscale("log")  # early validation losses of BatchNorm nets can be 1000x the final ones
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("top-1 accuracy (%)")
    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
