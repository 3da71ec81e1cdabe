"""Models by torchvision name, and checkpoints that load straight back into them.

Checkpoint contract (``runs/<run_id>/checkpoints/final.pt`` and ``epoch-<k>.pt``): a
``torch.save``'d dict with ``model`` (torchvision name), ``num_classes``,
``input_size``, ``mean``/``std`` (3 floats each, for inputs in [0, 1]), ``state_dict``
(loads into ``torchvision.models.get_model(model, num_classes=num_classes,
**model_kwargs)``; ``model_kwargs`` is empty except for models whose input size is
part of their architecture, such as ViTs), ``epoch`` and ``spec``. Epoch checkpoints
add the training state needed to resume (``optimizer``, ``scheduler``, ``scaler``,
``rng``, ``metrics``).
"""

from __future__ import annotations

import difflib
import functools
import io
import logging
from typing import Any

import torch
import torchvision
from torch import nn

from services.common.errors import SpecError
from services.common.store import Store, sha256_bytes
from services.train.api import read_done, verified_final_checkpoint  # noqa: F401  (read_done re-exported)

log = logging.getLogger(__name__)


@functools.cache
def classification_models() -> tuple[str, ...]:
    """Names of torchvision's image-classification models (``resnet50``, ``vit_b_16``, ...)."""
    return tuple(torchvision.models.list_models(module=torchvision.models))


@functools.cache
def segmentation_models() -> tuple[str, ...]:
    """Names of torchvision's semantic-segmentation models (``fcn_resnet50``, ``deeplabv3_resnet50``, ``lraspp_*``)."""
    return tuple(torchvision.models.list_models(module=torchvision.models.segmentation))


def check_model_name(name: str, task: str = "classification") -> str:
    """``name`` if torchvision has such a model for ``task``, else :class:`SpecError` with close matches."""
    known = segmentation_models() if task == "segmentation" else classification_models()
    if name in known:
        return name
    close = difflib.get_close_matches(name.lower(), known, n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known models include {', '.join(known[:8])}, ..."
    raise SpecError(f"model: unknown torchvision {task} model '{name}'{hint}")


def model_kwargs(name: str, input_size: int) -> dict[str, Any]:
    """Builder options beyond ``num_classes``: the input size for models that fix it (ViT); for segmentation
    models no backbone weights (torchvision would otherwise download ImageNet weights for the backbone)."""
    if name in segmentation_models():
        return {"weights_backbone": None}
    check_model_name(name)
    if input_size == 224:
        return {}
    if name.startswith("vit_"):
        return {"image_size": input_size}
    if name.startswith("maxvit_"):
        return {"input_size": (input_size, input_size)}
    return {}


def build_model(name: str, num_classes: int, input_size: int = 224) -> nn.Module:
    """A freshly initialised torchvision classifier (no pre-trained weights are ever downloaded)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return torchvision.models.get_model(check_model_name(name), weights=None, num_classes=num_classes,
                                        **model_kwargs(name, input_size))


def logits_of(output: Any) -> torch.Tensor:
    """The main logits of a model's output (GoogLeNet and Inception return named tuples in training)."""
    if isinstance(output, torch.Tensor):
        return output
    return output.logits if hasattr(output, "logits") else output[0]


@functools.cache
def head_parameter_names(name: str, input_size: int = 224) -> frozenset[str]:
    """State-dict keys of the classification head: those whose shape depends on ``num_classes``.

    Found by building the model twice on the meta device with different class counts,
    so it works for every torchvision family (``fc``, ``classifier[-1]``, ``heads.head``...).
    """
    with torch.device("meta"):
        a = build_model(name, 7, input_size).state_dict()
        b = build_model(name, 11, input_size).state_dict()
    return frozenset(k for k in a if a[k].shape != b[k].shape)


def first_conv(model: nn.Module) -> nn.Conv2d | None:
    """The first 2-D convolution (its filters are what people like to look at)."""
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def checkpoint_dict(model: nn.Module, *, name: str, num_classes: int, input_size: int, mean, std,
                    epoch: int, spec: dict, **extra: Any) -> dict:
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    return {"model": name, "num_classes": num_classes, "input_size": input_size,
            "model_kwargs": model_kwargs(name, input_size), "mean": list(mean), "std": list(std),
            "state_dict": state, "epoch": epoch, "spec": spec, **extra}


def save_checkpoint(store: Store, key: str, checkpoint: dict) -> tuple[int, str]:
    """Write ``checkpoint`` at ``key``; return its (size, sha256 hex), for ``done.json``."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    data = buffer.getvalue()
    store.put_bytes(key, data)
    return len(data), sha256_bytes(data)


def load_verified_checkpoint(store: Store, run_prefix: str) -> dict:
    """``<run_prefix>/checkpoints/final.pt`` after checking it against the run's ``done.json``
    (:func:`services.train.api.verified_final_checkpoint`)."""
    return torch.load(io.BytesIO(verified_final_checkpoint(store, run_prefix)), map_location="cpu", weights_only=False)


def load_checkpoint(store: Store, key: str) -> dict:
    """A checkpoint dict from the store (``ObjectNotFoundError`` when missing)."""
    with store.open_read(key) as stream:
        return torch.load(io.BytesIO(stream.read()), map_location="cpu", weights_only=False)


def model_from_checkpoint(checkpoint: dict) -> nn.Module:
    """The torchvision model of a checkpoint, weights loaded (strictly)."""
    model = torchvision.models.get_model(checkpoint["model"], num_classes=checkpoint["num_classes"],
                                         **checkpoint.get("model_kwargs", {}))
    model.load_state_dict(checkpoint["state_dict"])
    return model
