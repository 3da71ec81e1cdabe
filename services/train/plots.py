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
    """Loss and top-1 (segmentation: macro and micro IoU; 3D prior: depth error in metres) per epoch, train and val,
    from ``metrics.jsonl`` records."""
    epochs = [r["epoch"] for r in records]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    segmentation = any("train_iou_macro" in r or "val_iou_macro" in r for r in records)
    # segmentation runs: mIoU (macro) and pooled IoU (micro) instead of top-1
    prior = any("train_depth_mae_m" in r or "val_depth_mae_m" in r for r in records)
    scores = (("iou_macro", "mIoU"), ("iou_micro", "IoU micro")) if segmentation else (("top1", ""),)
    if prior:  # the 3D prior has no classes: its depth error, in metres
        scores = (("depth_mae_m", "depth MAE"),)
    scale = 1 if prior else 100
    for split, style in (("train", "-o"), ("val", "--s")):
        loss = [r.get(f"{split}_loss") for r in records]
        if any(v is not None for v in loss):
            loss_ax.plot(epochs, [np.nan if v is None else v for v in loss], style, label=split, markersize=3)
            for metric, name in scores:
                values = [r.get(f"{split}_{metric}") for r in records]
                acc_ax.plot(epochs, [np.nan if v is None else scale * v for v in values],
                            style if metric != "iou_micro" else style.replace("o", "^").replace("s", "v"),
                            label=f"{split} {name}".strip(), markersize=3)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("weighted loss (log scale)" if prior else "cross-entropy loss (log scale)")
    loss_ax.set_yscale("log")  # early validation losses of BatchNorm nets can be 1000x the final ones
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("depth mean absolute error (m)" if prior else "IoU (%)" if segmentation else "top-1 accuracy (%)")
    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def label_colours(classes: int) -> np.ndarray:
    """(classes, 3) uint8 colours of label values: 0 (background) black, then the tab20 colours."""
    palette = (np.asarray(plt.get_cmap("tab20").colors) * 255).astype(np.uint8)
    colours = np.zeros((max(classes, 1), 3), dtype=np.uint8)
    colours[1:] = palette[np.arange(max(classes, 1) - 1) % len(palette)]
    return colours


def colour_labels(labels: np.ndarray, classes: int, ignore: int = -100) -> np.ndarray:
    """(H, W, 3) uint8 picture of a label map; ignored pixels white."""
    labels = np.asarray(labels)
    out = label_colours(classes)[np.clip(labels, 0, max(classes, 1) - 1)]
    out[labels == ignore] = 255
    return out


def triplets_png(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], predictions: Sequence[np.ndarray],
                 classes: int, title: str = "", class_names: Sequence[str] | None = None) -> bytes:
    """Rows of image / label map / prediction (the same colours for the same class; ignored pixels white)."""
    rows = max(len(images), 1)
    fig, axes = plt.subplots(rows, 3, figsize=(6.6, 2.2 * rows + 0.4), dpi=100, squeeze=False)
    for row, (image, label, prediction) in enumerate(zip(images, labels, predictions)):
        for col, (picture, name) in enumerate(((image, "image"), (colour_labels(label, classes), "label"),
                                              (colour_labels(prediction, classes), "prediction"))):
            ax = axes[row, col]
            ax.imshow(picture, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=9)
    present = sorted({int(v) for m in (*labels, *predictions) for v in np.unique(m) if 0 <= v < classes})
    if class_names and present:
        colours = label_colours(classes) / 255.0
        handles = [plt.Rectangle((0, 0), 1, 1, color=colours[k]) for k in present]
        fig.legend(handles, [class_names[k] if k < len(class_names) else str(k) for k in present],
                   loc="lower center", ncol=min(len(present), 6), fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.06 if class_names and present else 0, 1, 1))
    return _png(fig)


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
