"""Image classification: cross-entropy over class logits, top-1 and top-5 accuracy."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from services.train.models import build_model, logits_of
from services.train.objectives.base import Objective
from services.train.objectives.registry import register_objective


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> list[int]:
    """Number of samples whose label is among the top-k logits, per k (k capped at the class count)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top.eq(labels[:, None])
    return [int(hits[:, : min(k, kmax)].any(dim=1).sum()) for k in ks]


@register_objective
class Classification(Objective):
    name = "classification"
    metrics = ("top1", "top5")

    def __init__(self, run):
        super().__init__(run)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=run.optim.label_smoothing)

    def build_model(self, num_classes: int) -> nn.Module:
        return build_model(self.run.model, num_classes, self.run.input_size)

    def targets(self, batch: dict, device: torch.device) -> torch.Tensor:
        return batch["label"].to(device, non_blocking=True)

    def loss(self, output: Any, targets: torch.Tensor) -> torch.Tensor:
        return self.criterion(logits_of(output), targets)

    def metric_sums(self, output: Any, targets: torch.Tensor) -> list[float]:
        return topk_correct(logits_of(output).detach().float(), targets)
