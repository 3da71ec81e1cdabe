"""Semantic segmentation: per-pixel cross-entropy against each sample's label map.

Targets are the ``seg.png`` label maps (render writes class + 1 where an object of that
class is visible, 0 for background), renumbered by the run's label table and cropped,
resized (nearest neighbour) and flipped with their image by the loader; the network has
``classes + 1`` outputs, background being class 0. Pixels of classes a mix leaves out
are ignored by the loss and the metrics.

Metrics come from the confusion matrix summed over every pixel of the epoch (not means of
per-image scores): pixel accuracy (= micro F1), class-balanced pixel accuracy (mean recall),
IoU and F1, each micro-averaged (pooled counts) and macro-averaged (mean over the classes
that occur in the targets or the predictions; a class absent from both has no score).
Validation adds 95 % bootstrap intervals over images (``val_<metric>_ci``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn

from services.common.seeds import derive_rng
from services.train.data import IGNORE_INDEX
from services.train.models import check_model_name, model_kwargs
from services.train.objectives.base import Objective
from services.train.objectives.registry import register_objective

METRICS = ("iou_macro", "iou_micro", "pixel_accuracy", "pixel_accuracy_macro", "f1_macro", "f1_micro")
BOOTSTRAP_SAMPLES = 1000


def confusion_matrices(predictions: torch.Tensor, targets: torch.Tensor, classes: int) -> torch.Tensor:
    """Per-image confusion matrices ``(n, classes, classes)`` (row: target, column: prediction), int64.

    ``predictions`` and ``targets`` are ``(n, H, W)`` class indices; target pixels equal to
    :data:`IGNORE_INDEX` are left out.
    """
    n = targets.shape[0]
    valid = targets != IGNORE_INDEX
    image = torch.arange(n, device=targets.device).view(n, *([1] * (targets.dim() - 1))).expand_as(targets)
    cells = (image * classes + targets.clamp(min=0)) * classes + predictions
    counts = torch.bincount(cells[valid], minlength=n * classes * classes)
    return counts.view(n, classes, classes)


def scores(confusion: np.ndarray) -> dict[str, float]:
    """The :data:`METRICS` of a ``(classes, classes)`` confusion matrix (row: target, column: prediction);
    a ``(..., classes, classes)`` stack gives arrays of them."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diagonal(confusion, axis1=-2, axis2=-1)
    support = confusion.sum(axis=-1)  # pixels of each class in the targets
    predicted = confusion.sum(axis=-2)
    fp, fn = predicted - tp, support - tp
    union = tp + fp + fn
    present = union > 0  # in the targets or the predictions

    def macro(numerator, denominator, mask):
        with np.errstate(invalid="ignore", divide="ignore"):
            per_class = np.where(mask, numerator / np.where(mask, denominator, 1), 0.0)
        return per_class.sum(axis=-1) / np.maximum(mask.sum(axis=-1), 1)

    total = support.sum(axis=-1)
    tp_all, fp_all, fn_all = tp.sum(axis=-1), fp.sum(axis=-1), fn.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(total > 0, tp_all / np.maximum(total, 1), 0.0)
        iou_micro = np.where(tp_all + fp_all + fn_all > 0, tp_all / np.maximum(tp_all + fp_all + fn_all, 1), 0.0)
    return {
        "iou_macro": macro(tp, union, present),
        "iou_micro": iou_micro,
        "pixel_accuracy": accuracy,
        "pixel_accuracy_macro": macro(tp, support, support > 0),  # mean recall over the classes in the targets
        "f1_macro": macro(2 * tp, 2 * tp + fp + fn, present),
        "f1_micro": accuracy,  # single-label: pooled F1 = pooled precision = pooled recall = accuracy
    }


def bootstrap_intervals(per_image: np.ndarray, rng: np.random.Generator, samples: int = BOOTSTRAP_SAMPLES,
                        level: float = 0.95) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of :func:`scores` over images.

    ``per_image`` is ``(n, classes, classes)``; each replicate draws ``n`` images with
    replacement and scores their summed confusion matrix.
    """
    n = per_image.shape[0]
    if n == 0:
        return {}
    draws = rng.integers(0, n, size=(samples, n))
    weights = np.zeros((samples, n))
    np.add.at(weights, (np.arange(samples)[:, None], draws), 1.0)  # how often each image is drawn
    pooled = (weights @ per_image.reshape(n, -1).astype(np.float64)).reshape(samples, *per_image.shape[1:])
    tail = 100 * (1 - level) / 2
    return {name: [float(v) for v in np.percentile(values, [tail, 100 - tail])]
            for name, values in scores(pooled).items()}


def logits_of(output: Any) -> torch.Tensor:
    """The main per-pixel logits of a torchvision segmentation model's output (``{"out": ..., "aux": ...}``)."""
    return output["out"] if isinstance(output, dict) else output


@register_objective
class Segmentation(Objective):
    name = "segmentation"
    metrics = METRICS
    reads_label_maps = True

    def __init__(self, run):
        super().__init__(run)
        check_model_name(run.model, "segmentation")
        self.criterion = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX, label_smoothing=run.optim.label_smoothing)
        self.classes = 0

    @property
    def sum_width(self) -> int:
        return self.classes * self.classes  # the flattened confusion matrix

    def output_classes(self, num_classes: int) -> int:
        return num_classes + 1  # class 0: background

    def build_model(self, num_classes: int) -> nn.Module:
        self.classes = num_classes
        return torchvision.models.get_model(self.run.model, weights=None, num_classes=num_classes,
                                            **model_kwargs(self.run.model, self.run.input_size))

    def targets(self, batch: dict, device: torch.device) -> torch.Tensor:
        return batch["seg"].to(device, non_blocking=True)

    def loss(self, output: Any, targets: torch.Tensor) -> torch.Tensor:
        return self.criterion(logits_of(output), targets)

    def _confusion(self, output: Any, targets: torch.Tensor) -> torch.Tensor:
        logits = logits_of(output).detach()
        return confusion_matrices(logits.argmax(1), targets, logits.shape[1])

    def metric_sums(self, output: Any, targets: torch.Tensor) -> list[float]:
        return self._confusion(output, targets).sum(0).flatten().tolist()

    def per_sample(self, output: Any, targets: torch.Tensor) -> np.ndarray:
        return self._confusion(output, targets).cpu().numpy()

    def summarize(self, sums: list[float], seen: float) -> dict[str, float]:
        classes = int(round(len(sums) ** 0.5))
        return {name: float(value) for name, value in scores(np.reshape(sums, (classes, classes))).items()}

    def intervals(self, per_sample: np.ndarray, epoch: int) -> dict[str, list[float]]:
        return bootstrap_intervals(per_sample, derive_rng(self.run.seed, "bootstrap", epoch))
