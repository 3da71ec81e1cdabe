"""What a training objective is: the part of pre-training that differs between tasks.

The loop (:mod:`services.train.loop`) owns everything the tasks share: data streaming,
the optimiser and schedule, mixed precision, DDP, checkpoints and resumption, metrics
files and Prometheus gauges. An objective owns the rest:

- :meth:`Objective.build_model` — the network with its head or decoder;
- :meth:`Objective.targets` — what in a batch the output is compared with;
- :meth:`Objective.loss` — the scalar loss of one batch (under autocast when AMP is on);
- :meth:`Objective.metric_sums` — per-batch sums (:attr:`~Objective.sum_width` numbers, added over the
  epoch and across ranks) that :meth:`Objective.summarize` turns into the :attr:`~Objective.metrics`
  (reported per epoch as ``train_<metric>`` / ``val_<metric>``; by default the sums divided by the samples seen);
- :meth:`Objective.per_sample` and :meth:`Objective.intervals` — optional confidence intervals of the
  validation metrics (``val_<metric>_ci``);
- :meth:`Objective.output_classes` — the network's outputs for the run's classes (segmentation adds background);
- :meth:`Objective.checkpoint_extras` — what a checkpoint needs besides the weights;
- optional hooks: :attr:`~Objective.reads_members` (further sample members the loader reads),
  :meth:`Objective.sample_stream` (training samples that are not the run's rendered datasets),
  :meth:`Objective.forward` (how the network is called, when it needs more than the images),
  :meth:`Objective.start_from` / :meth:`Objective.load_initial` (a run's ``init_from`` weights) and
  :meth:`Objective.checkpoint_model` (the part of the network the final checkpoint keeps).

A new objective is one module in this package whose class is decorated with
:func:`~services.train.objectives.register_objective`.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import IterableDataset

from services.common.spec.train import PretrainSpec


class Objective(abc.ABC):
    """One training task of a pre-training run."""

    name: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]] = ()
    #: the loader also reads each sample's label map (``batch["seg"]``)
    reads_label_maps: ClassVar[bool] = False
    #: further members the loader reads per sample (``services.train.data.EXTRA_MEMBERS``: depth maps, records)
    reads_members: ClassVar[tuple[str, ...]] = ()

    def __init__(self, run: PretrainSpec):
        self.run = run

    @abc.abstractmethod
    def build_model(self, num_classes: int) -> nn.Module:
        """A freshly initialised network for ``num_classes`` classes (no downloaded weights)."""

    @abc.abstractmethod
    def targets(self, batch: dict, device: torch.device) -> Any:
        """The tensor the model's output is scored against, on ``device``."""

    @abc.abstractmethod
    def loss(self, output: Any, targets: torch.Tensor) -> torch.Tensor:
        """Mean loss of one batch (a scalar tensor that can be back-propagated)."""

    def forward(self, model: nn.Module, x: torch.Tensor, targets: Any) -> Any:
        """The network's output for the normalised images ``x`` (and, if it needs them, the batch's targets)."""
        return model(x)

    def sample_stream(self, *, epoch: int, rank: int, world_size: int) -> IterableDataset | None:
        """Training samples from somewhere other than the run's rendered datasets (None: those, the default)."""
        return None

    def start_from(self, checkpoint: dict | None) -> None:
        """The final checkpoint of the run's ``init_from`` run (None: from scratch), before the model is built."""

    def load_initial(self, model: nn.Module, checkpoint: dict) -> None:
        """Load the ``init_from`` run's weights into a freshly built ``model`` (default: every weight, strictly)."""
        model.load_state_dict(checkpoint["state_dict"])

    def checkpoint_model(self, model: nn.Module) -> nn.Module:
        """The part of ``model`` the run's final checkpoint keeps (it must load into the torchvision model)."""
        return model

    def output_classes(self, num_classes: int) -> int:
        """Outputs of the network for a run of ``num_classes`` classes."""
        return num_classes

    @property
    def sum_width(self) -> int:
        """How many numbers :meth:`metric_sums` returns (fixed once the model is built)."""
        return len(self.metrics)

    def metric_sums(self, output: Any, targets: torch.Tensor) -> list[float]:
        """Sums over the batch's samples of each of :attr:`metrics`, in that order."""
        return []

    def summarize(self, sums: list[float], seen: float) -> dict[str, float]:
        """The epoch's :attr:`metrics` from the summed :meth:`metric_sums` of ``seen`` samples."""
        return {m: value / seen for m, value in zip(self.metrics, sums)}

    def per_sample(self, output: Any, targets: torch.Tensor) -> np.ndarray | None:
        """Per-sample statistics for :meth:`intervals` (rows: samples), or None when the objective has none."""
        return None

    def intervals(self, per_sample: np.ndarray, epoch: int) -> dict[str, list[float]]:
        """Confidence intervals ``{metric: [low, high]}`` from the validation samples' :meth:`per_sample` rows."""
        return {}

    def checkpoint_extras(self) -> dict:
        """Entries a checkpoint of this objective carries besides the common ones."""
        return {}
