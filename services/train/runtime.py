"""How transfer fits run (device, loaders, mixed precision) and what one (source, target, mode) fit is.

Shared by :mod:`services.train.transfer` and :mod:`services.train.segtransfer`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from services.train.data import to_model_input


@dataclass
class Runtime:
    """How a fit runs: device, loader workers, mixed precision, memory format."""

    device: torch.device
    workers: int = 0
    amp: bool = True
    amp_dtype: str = "bfloat16"
    channels_last: bool = True

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def use_amp(self) -> bool:
        return self.cuda and self.amp

    @property
    def dtype(self):
        return torch.bfloat16 if self.amp_dtype == "bfloat16" else torch.float16

    def loader(self, data: Dataset, batch_size: int, *, shuffle: bool = False, generator=None,
               drop_last: bool = False) -> DataLoader:
        workers = self.workers if not isinstance(data, TensorDataset) else 0  # cached features need no workers
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last,
                          num_workers=workers, pin_memory=self.cuda, persistent_workers=False)

    def inputs(self, images: torch.Tensor, source) -> torch.Tensor:
        """A uint8 (N, H, W, 3) batch normalised with ``source``'s mean and std, on the device."""
        return to_model_input(images, self.device, channels_last=self.cuda and self.channels_last,
                              mean=source.mean, std=source.std)


def _runtime(device) -> Runtime:
    return device if isinstance(device, Runtime) else Runtime(torch.device(device))


@dataclass
class Trainer:
    """One (source, target, mode): ``run(train_indices, evaluate_on, lr, wd, seed)`` -> (metrics, train metrics)."""

    run: Callable
    fit_set: Dataset   # training split as fitted (augmented for fine-tuning)
    eval_train: Dataset  # training split as evaluated (cross-validation folds score on it)
    test: Dataset
    cached: bool
