"""Layer activations of trained checkpoints, preprocessed as the model was trained.

Checkpoints follow the train stage's contract (``runs/<run_id>/checkpoints/final.pt``):
a dict with the torchvision model name, ``num_classes``, ``input_size``, ``mean``,
``std`` and ``state_dict``. Activations come from
``torchvision.models.feature_extraction.create_feature_extractor`` and are reduced
to one feature vector per stimulus (global average, an average-pooled grid, or all
units). Results are cached in the store under
``features/<checkpoint sha256[:16]>/<stimulus set sha256[:16]>/<layer>.<pooling>.npy``.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from services.common.errors import ResourceLimitError
from services.common.store import Store

ProgressFn = Callable[[str, int, int], None]
MAX_FEATURE_BYTES = 8 * 1024**3  # all layers' float32 features of one stimulus set


@dataclass
class Checkpoint:
    """A loaded checkpoint: what is needed to rebuild the model and preprocess as in training."""

    model_name: str
    num_classes: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    state_dict: dict
    sha256: str
    key: str = ""

    def build(self) -> torch.nn.Module:
        """The torchvision model with the checkpoint's weights, in eval mode."""
        model = torchvision.models.get_model(self.model_name, num_classes=self.num_classes)
        model.load_state_dict(self.state_dict)
        return model.eval()


def checkpoint_from_bytes(data: bytes, key: str = "checkpoint") -> Checkpoint:
    """Parse a checkpoint saved with ``torch.save`` in the train stage's format."""
    try:
        raw = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise ValueError(f"{key}: not a readable torch checkpoint ({exc})") from None
    missing = [k for k in ("model", "num_classes", "input_size", "mean", "std", "state_dict") if k not in raw]
    if missing:
        raise ValueError(f"{key}: checkpoint lacks {', '.join(missing)} (see the train stage's checkpoint contract)")
    return Checkpoint(
        model_name=str(raw["model"]),
        num_classes=int(raw["num_classes"]),
        input_size=int(raw["input_size"]),
        mean=tuple(float(v) for v in raw["mean"]),
        std=tuple(float(v) for v in raw["std"]),
        state_dict=raw["state_dict"],
        sha256=hashlib.sha256(data).hexdigest(),
        key=key,
    )


def load_checkpoint(store: Store, key: str) -> Checkpoint:
    """Read a checkpoint from the store (:class:`ObjectNotFoundError` if absent)."""
    return checkpoint_from_bytes(store.get_bytes(key), key)


def checkpoint_bytes(model: torch.nn.Module, model_name: str, num_classes: int, input_size: int,
                     mean: Sequence[float], std: Sequence[float], *, epoch: int = 0, spec: dict | None = None) -> bytes:
    """Serialise a model in the checkpoint contract format (for planted networks and tests)."""
    buffer = io.BytesIO()
    torch.save({
        "model": model_name, "num_classes": int(num_classes), "input_size": int(input_size),
        "mean": [float(v) for v in mean], "std": [float(v) for v in std],
        "state_dict": model.state_dict(), "epoch": int(epoch), "spec": spec or {},
    }, buffer)
    return buffer.getvalue()


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: the GPU when torch sees one, else the CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' requested but torch sees no GPU here; use 'auto' or 'cpu'")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device: unknown {device!r} (known: auto, cpu, cuda)")
    return torch.device(device)


def check_layers(model: torch.nn.Module, layers: Sequence[str]) -> None:
    """Raise ``ValueError`` naming any layer that is not a node of the model's graph."""
    _, eval_nodes = get_graph_node_names(model)
    # A module name ("layer3") selects the output of its last node, as create_feature_extractor allows.
    known = set(eval_nodes) | {name for name, _ in model.named_modules() if name}
    unknown = [layer for layer in layers if layer not in known]
    if unknown:
        top = [name for name, _ in model.named_children()]
        raise ValueError(f"layers: {unknown} are not nodes of {type(model).__name__} (top-level modules: {top})")


def preprocess(images: np.ndarray, input_size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 RGB images (B, H, W, 3) → normalised float tensor (B, 3, input_size, input_size).

    Resized (bilinear, antialiased) to the training input size and normalised with
    the checkpoint's mean and std, as the train stage's evaluation transform does.
    """
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-2:] != (input_size, input_size):
        x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", antialias=True, align_corners=False)
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def pool_activation(activation: torch.Tensor, pooling: str = "avg", grid: int = 4) -> torch.Tensor:
    """Reduce one layer's activations (B, C, H, W), (B, T, C) or (B, C) to (B, D).

    ``avg``: global average over space (or tokens) → C; ``grid``: adaptive average to
    ``grid × grid`` then flatten → C·grid²; ``flatten``: every unit.
    """
    a = activation
    if pooling == "flatten" or a.ndim == 2:
        return a.flatten(1)
    if pooling == "avg":
        return a.mean(dim=(2, 3)) if a.ndim == 4 else a.mean(dim=1)
    if pooling == "grid":
        if a.ndim != 4:
            return a.mean(dim=1)
        return F.adaptive_avg_pool2d(a, grid).flatten(1)
    raise ValueError(f"pooling: unknown {pooling!r} (known: avg, grid, flatten)")


@torch.no_grad()
def extract_features(
    model: torch.nn.Module,
    images: np.ndarray,
    layers: Sequence[str],
    *,
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    pooling: str = "avg",
    grid: int = 4,
    batch_size: int = 64,
    progress: ProgressFn | None = None,
    max_bytes: int = MAX_FEATURE_BYTES,
    device: str = "cpu",
) -> dict[str, np.ndarray]:
    """Features of ``layers`` for every stimulus.

    Parameters
    ----------
    images : (S, H, W, 3) uint8

    Returns
    -------
    dict layer → (S, D_layer) float32

    Raises
    ------
    ResourceLimitError
        When the features would exceed ``max_bytes`` (e.g. 'flatten' of early layers).
    """
    check_layers(model, layers)
    target = resolve_device(device)
    extractor = create_feature_extractor(model.eval(), return_nodes={layer: layer for layer in layers}).to(target)
    chunks: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
    total = len(images)
    for start in range(0, total, batch_size):
        batch = preprocess(images[start:start + batch_size], input_size, mean, std).to(target)
        out = extractor(batch)
        for layer in layers:
            chunks[layer].append(pool_activation(out[layer], pooling, grid).float().cpu().numpy())
        if start == 0:
            dims = {layer: chunks[layer][0].shape[1] for layer in layers}
            needed = 4 * total * sum(dims.values())
            if needed > max_bytes:
                raise ResourceLimitError(
                    f"features of {dims} for {total} stimuli need {needed / 1024**3:.1f} GiB (cap "
                    f"{max_bytes / 1024**3:.1f} GiB); use pooling 'avg' or 'grid' instead of {pooling!r}"
                )
        if progress:
            progress("features", min(start + batch_size, total), total)
    return {layer: np.concatenate(parts).astype(np.float32) for layer, parts in chunks.items()}


def feature_cache_key(checkpoint_sha: str, stimulus_hash: str, layer: str, pooling: str, grid: int) -> str:
    tag = f"grid{grid}" if pooling == "grid" else pooling
    safe_layer = layer.replace("/", "_")
    return f"features/{checkpoint_sha[:16]}/{stimulus_hash[:16]}/{safe_layer}.{tag}.npy"


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def cached_features(
    store: Store,
    checkpoint: Checkpoint,
    images: np.ndarray,
    stimulus_hash: str,
    layers: Sequence[str],
    *,
    pooling: str = "avg",
    grid: int = 4,
    batch_size: int = 64,
    progress: ProgressFn | None = None,
    device: str = "cpu",
) -> dict[str, np.ndarray]:
    """Features of ``layers``, read from the store cache or extracted (one forward pass for all missing layers) and cached."""
    keys = {layer: feature_cache_key(checkpoint.sha256, stimulus_hash, layer, pooling, grid) for layer in layers}
    found = {layer: np.load(io.BytesIO(store.get_bytes(key)), allow_pickle=False)
             for layer, key in keys.items() if store.exists(key)}
    missing = [layer for layer in layers if layer not in found]
    if missing:
        fresh = extract_features(
            checkpoint.build(), images, missing, input_size=checkpoint.input_size, mean=checkpoint.mean,
            std=checkpoint.std, pooling=pooling, grid=grid, batch_size=batch_size, progress=progress, device=device,
        )
        for layer, array in fresh.items():
            store.put_bytes(keys[layer], _npy_bytes(array))
        found.update(fresh)
    return {layer: found[layer] for layer in layers}
