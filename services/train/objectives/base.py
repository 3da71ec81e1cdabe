"""What a training objective is: the part of pre-training that differs between tasks.

The loop (:mod:`services.train.loop`) owns everything the tasks share: data streaming,
the optimiser and schedule, mixed precision, DDP, checkpoints and resumption, metrics
files and Prometheus gauges. An objective owns the rest:

- :meth:`Objective.build_model` — the network with its head or decoder;
- :meth:`Objective.targets` — what in a batch the output is compared with;
- :meth:`Objective.loss` — the scalar loss of one batch (under autocast when AMP is on);
- :meth:`Objective.metric_sums` — per-batch sums of the objective's :attr:`~Objective.metrics`
  (reported per epoch as ``train_<metric>`` / ``val_<metric>``, divided by the samples seen);
- :meth:`Objective.checkpoint_extras` — what a checkpoint needs besides the weights.

A new objective is one module in this package whose class is decorated with
:func:`~services.train.objectives.register_objective`.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch
from torch import nn

from services.common.spec.train import PretrainSpec


class Objective(abc.ABC):
    """One training task of a pre-training run."""

    name: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]] = ()

    def __init__(self, run: PretrainSpec):
        self.run = run

    @abc.abstractmethod
    def build_model(self, num_classes: int) -> nn.Module:
        """A freshly initialised network for ``num_classes`` classes (no downloaded weights)."""

    @abc.abstractmethod
    def targets(self, batch: dict, device: torch.device) -> torch.Tensor:
        """The tensor the model's output is scored against, on ``device``."""

    @abc.abstractmethod
    def loss(self, output: Any, targets: torch.Tensor) -> torch.Tensor:
        """Mean loss of one batch (a scalar tensor that can be back-propagated)."""

    def metric_sums(self, output: Any, targets: torch.Tensor) -> list[float]:
        """Sums over the batch's samples of each of :attr:`metrics`, in that order."""
        return []

    def checkpoint_extras(self) -> dict:
        """Entries a checkpoint of this objective carries besides the common ones."""
        return {}
