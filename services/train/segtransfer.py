"""Transfer to semantic-segmentation targets (:mod:`services.train.segtargets`): fine-tuning and probes.

The network is a torchvision segmentation model: the source's own model when it was pre-trained
with ``task: segmentation`` (``fcn_resnet50`` on noise scenes, say), or ``fcn_<model>`` for a
ResNet classifier (its layers are FCN's backbone). The pre-trained **backbone** (every
``backbone.*`` weight) is transferred; the classifier head (``classifier.*``, ``aux_classifier.*``)
is initialised afresh, as the class counts differ. The ``scratch`` source (always run beside the
pre-trained ones) is the same architecture from random initialisation: the baseline.

``finetune`` trains every layer; ``linear_probe`` freezes the backbone (in eval mode, so its
BatchNorm statistics stay put) and trains the head. Loss: per-pixel cross-entropy, ignored pixels
(255 in the data) left out. Images are resized straight to the input size (no crops);
``augment.horizontal_flip`` flips image and label map together. Metrics (the pre-training ones,
:mod:`services.train.objectives.segmentation`): pixel accuracy, IoU and F1, micro and macro, from
the confusion matrix pooled over the split, with 95 % bootstrap intervals over images
(``<metric>_ci``); the score of a transfer is the macro IoU (mIoU).
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision
from torch import nn
from torch.utils.data import Dataset, Subset

from services.common.errors import FlatlandError
from services.common.seeds import derive_rng
from services.common.spec.train import OptimSpec
from services.train.data import IGNORE_INDEX
from services.train.models import model_kwargs, segmentation_models
from services.train.objectives.segmentation import bootstrap_intervals, confusion_matrices, scores
from services.train.runtime import Trainer, _runtime, train_model

#: The score of a segmentation transfer.
METRIC = "iou_macro"


def segmentation_model_for(model: str) -> str:
    """The segmentation network a source of architecture ``model`` transfers into."""
    if model in segmentation_models():
        return model
    candidate = f"fcn_{model}"
    if candidate in segmentation_models():
        return candidate
    raise FlatlandError(f"model '{model}' has no torchvision segmentation counterpart to transfer its backbone into "
                        f"(segmentation targets take a segmentation run's model, or resnet50/resnet101 as fcn_<model>)")


def prepare_segmentation_model(source, num_classes: int, mode: str) -> nn.Module:
    """``source``'s segmentation network with a fresh ``num_classes`` head and its backbone weights copied in."""
    name = segmentation_model_for(source.model)
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes,
                                        **model_kwargs(name, source.input_size))
    backbone_keys = {k for k in model.state_dict() if k.startswith("backbone.")}
    if source.state_dict is not None:
        if source.model == name:
            weights = {k: v for k, v in source.state_dict.items() if k.startswith("backbone.")}
        else:  # a classifier: its layers are the backbone's, without the "backbone." prefix
            weights = {f"backbone.{k}": v for k, v in source.state_dict.items() if f"backbone.{k}" in backbone_keys}
        missing = sorted(backbone_keys - weights.keys())
        if missing:
            raise FlatlandError(f"checkpoint of '{source.name}' ({source.model}) lacks backbone weights of {name}: "
                                f"{missing[:5]}")
        model.load_state_dict(weights, strict=False)
    if mode == "linear_probe":
        for key, param in model.named_parameters():
            param.requires_grad = not key.startswith("backbone.")
    return model


class Flips(Dataset):
    """Image and label map flipped left-right together with probability 1/2 (torch's generator: seeded per epoch)."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, mask = self.base[index]
        if bool(torch.rand(()) < 0.5):
            image, mask = image.flip(1), mask.flip(1)
        return image.contiguous(), mask.contiguous()


def _logits(output) -> torch.Tensor:
    return output["out"] if isinstance(output, dict) else output


def fit_segmentation(source, mode: str, train: Dataset, num_classes: int, *, lr: float, weight_decay: float,
                     optim: OptimSpec, epochs: int, batch_size: int, seed: int, device, checkpoint=None, resume=None,
                     stop_after_epoch: int | None = None, **_ignored) -> nn.Module:
    """Train a copy of ``source`` on ``(image, mask)`` items; the schedule, checkpoints and resumption of
    :func:`services.train.transfer.fit`."""
    rt = _runtime(device)
    torch.manual_seed(seed)
    model = rt.place(prepare_segmentation_model(source, num_classes, mode))
    return train_model(
        model, train, source, rt=rt, logits=_logits, set_train_mode=_train_mode(mode),
        criterion=nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX, label_smoothing=optim.label_smoothing),
        what=f"segmentation transfer of '{source.name}' ({mode}, lr={lr})", lr=lr, optim=optim, epochs=epochs,
        batch_size=batch_size, seed=seed, weight_decay=weight_decay, checkpoint=checkpoint, resume=resume,
        stop_after_epoch=stop_after_epoch)


def _train_mode(mode: str):
    def set_train_mode(model: nn.Module) -> None:
        model.train()
        if mode == "linear_probe":
            model.backbone.eval()  # frozen BatchNorm statistics
    return set_train_mode


def predict(model: nn.Module, data: Dataset, source, batch_size: int, device) -> tuple[np.ndarray, float]:
    """Per-image confusion matrices ``(n, classes, classes)`` of ``model`` on ``data`` and the mean per-pixel loss."""
    rt = _runtime(device)
    model.eval()
    matrices, loss_sum, pixels = [], 0.0, 0
    with torch.no_grad():
        for images, masks in rt.loader(data, max(1, min(batch_size, 32))):
            with torch.autocast(rt.device.type, dtype=rt.dtype, enabled=rt.use_amp):
                logits = _logits(model(rt.inputs(images, source))).float()
            masks = masks.to(rt.device)
            loss_sum += float(nn.functional.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX, reduction="sum"))
            pixels += int((masks != IGNORE_INDEX).sum())
            matrices.append(confusion_matrices(logits.argmax(1), masks, logits.shape[1]).cpu())
    classes = model_classes(model)
    per_image = torch.cat(matrices).numpy() if matrices else np.zeros((0, classes, classes), dtype=np.int64)
    return per_image, loss_sum / max(pixels, 1)


def model_classes(model: nn.Module) -> int:
    last = [m for m in model.classifier.modules() if isinstance(m, nn.Conv2d)][-1]
    return last.out_channels


def evaluate_segmentation(model: nn.Module, data: Dataset, source, batch_size: int, device, seed: int = 0) -> dict:
    """``{<metric>: value, <metric>_ci: [low, high], "loss", "images"}`` of ``model`` on ``data``."""
    per_image, loss = predict(model, data, source, batch_size, device)
    result = {name: float(value) for name, value in scores(per_image.sum(0)).items()}
    for name, interval in bootstrap_intervals(per_image, derive_rng(seed, "bootstrap")).items():
        result[f"{name}_ci"] = interval
    result.update({"loss": loss, "images": int(per_image.shape[0])})
    return result


@torch.no_grad()
def examples_png(model: nn.Module, data: Dataset, source, device, class_names, title: str, count: int = 4) -> bytes:
    """Image / label map / prediction of the first ``count`` items of ``data``."""
    from services.train.plots import triplets_png

    rt = _runtime(device)
    model.eval()
    items = [data[i] for i in range(min(count, len(data)))]
    if not items:
        return b""
    images = torch.stack([image for image, _ in items])
    logits = _logits(model(rt.inputs(images, source))).float()
    return triplets_png([image.numpy() for image, _ in items], [mask.numpy() for _, mask in items],
                        list(logits.argmax(1).cpu().numpy()), logits.shape[1], title, class_names)


def segmentation_trainer(source, mode: str, data, transfer, rt):
    """The fit-and-score function of one (source, segmentation target, mode)."""
    fit_set = Flips(data.train) if transfer.augment.horizontal_flip and mode == "finetune" else data.train
    common = {"optim": transfer.optim, "epochs": transfer.epochs, "batch_size": transfer.batch_size, "device": rt}

    def run(train_idx, evaluate_on, lr, wd, seed, **fit_kw):
        model = fit_segmentation(source, mode, Subset(fit_set, train_idx), data.num_classes, lr=lr, weight_decay=wd,
                                 seed=seed, **common, **fit_kw)
        test = evaluate_segmentation(model, evaluate_on, source, transfer.batch_size, rt, seed)
        if evaluate_on is data.test:  # the final fit: pictures of its first held-out images for the report
            test["_examples_png"] = examples_png(model, data.test, source, rt, data.classes,
                                                 f"{source.name} -> {data.name} ({mode})")
        return test, evaluate_segmentation(model, Subset(data.train, train_idx), source, transfer.batch_size, rt, seed)
    return Trainer(run, fit_set, data.train, data.test, False)
