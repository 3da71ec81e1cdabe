"""How transfer fits run (device, loaders, mixed precision) and what one (source, target, mode) fit is.

Shared by :mod:`services.train.transfer` and :mod:`services.train.segtransfer`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
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

    def place(self, model: nn.Module) -> nn.Module:
        """``model`` on the device, channels-last on CUDA when asked for (as :meth:`inputs` lays out batches)."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.cuda and self.channels_last else model

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


def train_model(model, train: Dataset, source, *, rt: Runtime, criterion, logits: Callable, set_train_mode: Callable,
                what: str, lr: float, optim, epochs: int, batch_size: int, seed: int, weight_decay: float,
                checkpoint: Callable[[dict], None] | None = None, resume: dict | None = None,
                stop_after_epoch: int | None = None):
    """The fine-tuning loop shared by classification and segmentation transfer: SGD with momentum over the
    trainable parameters, the spec's per-step schedule, AMP where the runtime uses it, a finite-loss check
    (``what`` names the run in the error), a checkpoint after every epoch and exact resumption (each epoch
    re-seeds its data order and augmentation). ``set_train_mode(model)`` puts the model in its training mode
    (a probe keeps the frozen backbone's BatchNorm statistics); ``logits(output)`` reads the network's output.
    ``stop_after_epoch`` ends the fit early, as a crash would (for tests)."""
    import math

    from torch import nn

    from services.common.seeds import derive_seed
    from services.train.loop import DivergedError, lr_factor

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=optim.momentum, weight_decay=weight_decay)
    drop_last = len(train) > batch_size
    steps = max(1, len(train) // batch_size if drop_last else math.ceil(len(train) / batch_size))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step / steps, optim, epochs))
    scaler = torch.amp.GradScaler("cuda", enabled=rt.use_amp and rt.dtype == torch.float16)
    start = 0
    if resume is not None:
        model.load_state_dict(resume["state_dict"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume["scaler"])
        start = resume["epoch"] + 1
    for epoch in range(start, epochs):
        torch.manual_seed(derive_seed(seed, "torch", epoch))  # augmentation draws (no workers)
        order = torch.Generator().manual_seed(derive_seed(seed, "order", epoch))  # order, and worker seeds
        set_train_mode(model)
        for images, targets in rt.loader(train, batch_size, shuffle=True, generator=order, drop_last=drop_last):
            with torch.autocast(rt.device.type, dtype=rt.dtype, enabled=rt.use_amp):
                out = logits(model(rt.inputs(images, source)))
            loss = criterion(out.float(), targets.to(rt.device, non_blocking=True))
            if not torch.isfinite(loss):
                raise DivergedError(f"{what}: loss became {loss.item()}; lower the learning rate or set "
                                    "optim.grad_clip_norm")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if optim.grad_clip_norm is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(params, optim.grad_clip_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
        if checkpoint is not None:
            checkpoint({"epoch": epoch, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict()})
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            break
    return model
