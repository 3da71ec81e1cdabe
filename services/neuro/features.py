"""Layer activations of trained checkpoints, preprocessed as the model was trained.

Checkpoints follow the train stage's contract (``runs/<run_id>/checkpoints/final.pt``):
a dict with the torchvision model name, ``num_classes``, ``input_size``, ``mean``,
``std`` and ``state_dict``. Activations come from
``torchvision.models.feature_extraction.create_feature_extractor`` and are reduced
to one feature vector per stimulus (global average, an average-pooled grid, or all
units). Results are cached in the store under
``features/<checkpoint sha256[:16]>/<stimulus set sha256[:16]>/<layer>.<pooling>.npy``.

Spatial features without global pooling (:func:`extract_spatial_features`): a layer's
every unit, reduced batch by batch as the stimuli pass, so the (stimuli x units) matrix
is never held. Two reductions, per layer: a seeded random projection (scikit-learn's
``SparseRandomProjection`` / ``GaussianRandomProjection``; data-independent, one pass)
and a streaming PCA (scikit-learn's ``IncrementalPCA``, fitted chunk by chunk on a fit
set, the stimuli or a separate image folder, then applied in a second pass). The memory
such a layer needs (the reduction's state, the chunk buffer, the output) is estimated
before any work and checked against the same cap as pooled features.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

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
def _activation_batches(model: torch.nn.Module, images: np.ndarray, layers: Sequence[str], *, input_size: int,
                        mean: Sequence[float], std: Sequence[float], batch_size: int,
                        device: str) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """(start index, layer → activations on the CPU) per batch of stimuli."""
    check_layers(model, layers)
    target = resolve_device(device)
    extractor = create_feature_extractor(model.eval(), return_nodes={layer: layer for layer in layers}).to(target)
    for start in range(0, len(images), batch_size):
        batch = preprocess(images[start:start + batch_size], input_size, mean, std).to(target)
        out = extractor(batch)
        yield start, {layer: out[layer].float().cpu() for layer in layers}


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


# ---------------------------------------------------------------- spatial features (no global pooling)

#: Rows per IncrementalPCA step: max(components, this). Fixed, not the forward batch size, so the fitted
#: components do not depend on ``batch_size`` (no part of a score's settings); small, because a step holds a
#: (components + rows) x units matrix and its SVD.
SPATIAL_CHUNK = 32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
MAX_FIT_IMAGES = 100_000


def _image_files(path: str | Path, field: str) -> tuple[Path, list[Path]]:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ValueError(f"{field}: {str(path)!r} is not a directory of images")
    files = sorted((p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                   key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise ValueError(f"{field}: no images ({', '.join(IMAGE_SUFFIXES)}) under {str(path)!r}")
    return root, files


def image_folder_digest(path: str | Path, *, field: str = "pca_fit_images") -> str:
    """SHA-256 of an image folder's file names and bytes (what a score fitted on it depends on)."""
    root, files = _image_files(path, field)
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.relative_to(root).as_posix().encode() + b"\0" + hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


def load_image_folder(path: str | Path, size: tuple[int, int], *, field: str = "pca_fit_images",
                      max_images: int = MAX_FIT_IMAGES, max_bytes: int = MAX_FEATURE_BYTES) -> tuple[np.ndarray, str]:
    """Every image under ``path`` (recursively, sorted by relative path) as uint8 RGB (N, H, W, 3) at ``size`` (H, W).

    Images are converted to RGB and resized (bilinear) to the stimuli's size, so the
    same preprocessing applies to both. Returns the images and a SHA-256 of the file
    names, their bytes and ``size`` (the cache key of their features).

    Raises ``ValueError`` naming ``field`` for a missing folder, no images, too many, or an unreadable file.
    """
    from PIL import Image, UnidentifiedImageError

    root, files = _image_files(path, field)
    if len(files) > max_images:
        raise ResourceLimitError(f"{field}: {len(files)} images under {str(path)!r}, at most {max_images}")
    height, width = int(size[0]), int(size[1])
    if len(files) * height * width * 3 > max_bytes:
        raise ResourceLimitError(f"{field}: {len(files)} images of {height}x{width} exceed "
                                 f"{max_bytes / 1024**3:.1f} GiB")
    digest = hashlib.sha256(f"{height}x{width}".encode())
    images = np.empty((len(files), height, width, 3), dtype=np.uint8)
    for i, file in enumerate(files):
        raw = file.read_bytes()
        digest.update(file.relative_to(root).as_posix().encode() + b"\0" + hashlib.sha256(raw).digest())
        try:
            with Image.open(io.BytesIO(raw)) as image:
                rgb = image.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"{field}: {file} is not a readable image ({exc})") from None
        if rgb.size != (width, height):
            rgb = rgb.resize((width, height), Image.BILINEAR)
        images[i] = np.asarray(rgb, dtype=np.uint8)
    return images, digest.hexdigest()


@dataclass(frozen=True)
class SpatialPlan:
    """How one layer's units are reduced: ``method`` 'none' keeps every unit (the layer has no more than asked for)."""

    layer: str
    units: int
    method: str  # "incremental_pca" | "random_projection" | "none"
    components: int
    projection: str = "sparse"

    def state_bytes(self, chunk: int = SPATIAL_CHUNK) -> int:
        """The reduction's own memory: projection matrix, or PCA components plus one step's stacked matrix and its SVD."""
        d, k = self.units, self.components
        if self.method == "random_projection":
            if self.projection == "gaussian":
                return 8 * k * d
            return int(12 * k * d / np.sqrt(d)) + 8 * (k + 1)  # CSR of density 1/sqrt(d): values, indices, pointers
        if self.method == "incremental_pca":
            c = max(chunk, k)
            # components_, the chunk as float64, and one partial_fit step: scikit-learn's running variance, the stacked
            # (k+c+1) x d matrix, its SVD and LAPACK's work (measured: about 5 such matrices at once)
            return 8 * d * (k + c + 5 * (k + c + 1))
        return 0

    def bytes_needed(self, stimuli: int, batch_size: int, chunk: int = SPATIAL_CHUNK) -> int:
        """Everything the layer holds at its peak: state, one batch (float32 and a float64 copy), the chunk buffer, the output."""
        buffer = 4 * self.units * (max(chunk, self.components) + batch_size) if self.method == "incremental_pca" else 0
        return self.state_bytes(chunk) + 12 * self.units * batch_size + buffer + 4 * stimuli * self.components


def plan_spatial(reductions: dict, units: dict[str, int], fit_count: int) -> dict[str, SpatialPlan]:
    """One :class:`SpatialPlan` per layer from its reduction settings (``method``, ``components``, ``projection``).

    A layer with no more units than components is kept whole (as Brain-Score leaves such layers
    un-PCA'd); a streaming PCA has at most as many components as fit images.
    """
    plans = {}
    for layer, r in reductions.items():
        d = units[layer]
        if d <= r.components:
            plans[layer] = SpatialPlan(layer, d, "none", d)
        elif r.method == "incremental_pca":
            plans[layer] = SpatialPlan(layer, d, "incremental_pca", min(r.components, fit_count))
        elif r.method == "random_projection":
            plans[layer] = SpatialPlan(layer, d, "random_projection", r.components, r.projection)
        else:
            raise ValueError(f"spatial.{layer}.method: unknown {r.method!r} (known: incremental_pca, random_projection)")
    return plans


def _projector(plan: SpatialPlan, seed: int):
    from sklearn.random_projection import GaussianRandomProjection, SparseRandomProjection

    from services.common.seeds import derive_seed

    state = derive_seed(seed, "neuro", "projection", plan.layer) % (2**32)
    if plan.projection == "gaussian":
        projector = GaussianRandomProjection(n_components=plan.components, random_state=state)
    else:
        projector = SparseRandomProjection(n_components=plan.components, density="auto", dense_output=True,
                                           random_state=state)
    return projector.fit(np.zeros((1, plan.units), dtype=np.float32))  # fit reads only the number of units


def extract_spatial_features(
    model: torch.nn.Module,
    images: np.ndarray,
    reductions: dict,
    *,
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int,
    fit_images: np.ndarray | None = None,
    batch_size: int = 64,
    progress: ProgressFn | None = None,
    max_bytes: int = MAX_FEATURE_BYTES,
    device: str = "cpu",
) -> dict[str, np.ndarray]:
    """Every unit of each layer in ``reductions`` (layer → settings with ``method``, ``components``, ``projection``),
    reduced while the stimuli pass, so no (stimuli x units) matrix is ever held.

    ``random_projection``: a seeded sparse (density 1/sqrt(units)) or Gaussian projection, one
    pass. ``incremental_pca``: ``IncrementalPCA`` fitted in chunks of :data:`SPATIAL_CHUNK` rows
    on ``fit_images`` (default: the stimuli), then applied in a second pass.

    Returns
    -------
    dict layer → (S, components) float32

    Raises
    ------
    ResourceLimitError
        When the reductions' estimated peak memory (:meth:`SpatialPlan.bytes_needed`) exceeds ``max_bytes``,
        before any forward pass over the stimuli.
    """
    from sklearn.decomposition import IncrementalPCA

    layers = list(reductions)
    if not layers:
        return {}
    if len(images) == 0:
        raise ValueError("images: no stimuli to extract spatial features from")
    kw = dict(input_size=input_size, mean=mean, std=std, device=device)
    _, probe = next(_activation_batches(model, images[:1], layers, batch_size=1, **kw))
    units = {layer: int(probe[layer][0].numel()) for layer in layers}
    fit_set = images if fit_images is None else fit_images
    plans = plan_spatial(reductions, units, len(fit_set))
    total = len(images)
    needed = sum(p.bytes_needed(total, batch_size) for p in plans.values())
    if needed > max_bytes:
        detail = {p.layer: f"{p.method} {p.units}->{p.components}" for p in plans.values()}
        raise ResourceLimitError(
            f"spatial features {detail} for {total} stimuli need {needed / 1024**3:.2f} GiB (cap "
            f"{max_bytes / 1024**3:.2f} GiB); use fewer components, a 'sparse' projection, or pooling"
        )
    reducers: dict = {}
    fitting = [p.layer for p in plans.values() if p.method == "incremental_pca"]
    passes = 2 if fitting else 1
    if fitting:
        pcas = {layer: IncrementalPCA(n_components=plans[layer].components) for layer in fitting}
        buffers: dict[str, list[np.ndarray]] = {layer: [] for layer in fitting}
        chunk = {layer: max(SPATIAL_CHUNK, plans[layer].components) for layer in fitting}

        def flush(layer: str, final: bool) -> None:
            rows = np.concatenate(buffers[layer]) if buffers[layer] else np.empty((0, plans[layer].units), np.float32)
            step = chunk[layer]
            while len(rows) >= step or (final and len(rows)):
                take = rows[:step] if len(rows) >= step else rows
                pcas[layer].partial_fit(take.astype(np.float64))
                rows = rows[len(take):]
            buffers[layer] = [rows] if len(rows) else []

        for start, out in _activation_batches(model, fit_set, fitting, batch_size=batch_size, **kw):
            for layer in fitting:
                buffers[layer].append(out[layer].flatten(1).numpy())
                if sum(len(b) for b in buffers[layer]) >= chunk[layer]:
                    flush(layer, final=False)
            if progress:
                progress("features", min(start + batch_size, len(fit_set)), len(fit_set) * passes)
        for layer in fitting:
            flush(layer, final=True)
            reducers[layer] = pcas[layer]
    for plan in plans.values():
        if plan.method == "random_projection":
            reducers[plan.layer] = _projector(plan, seed)
    result = {layer: np.empty((total, plans[layer].components), dtype=np.float32) for layer in layers}
    offset = len(fit_set) if fitting else 0
    for start, out in _activation_batches(model, images, layers, batch_size=batch_size, **kw):
        for layer in layers:
            flat = out[layer].flatten(1).numpy()
            reducer = reducers.get(layer)
            result[layer][start:start + len(flat)] = flat if reducer is None else reducer.transform(flat)
        if progress:
            progress("features", offset + min(start + batch_size, total), (len(fit_set) if fitting else 0) + total)
    return result


def spatial_tag(reduction, seed: int, fit_hash: str | None) -> str:
    """The cache tag of a spatial layer's features: method, components, and what they depend on (seed or fit set)."""
    if reduction.method == "random_projection":
        return f"rp-{reduction.projection}{reduction.components}-seed{seed}"
    return f"ipca{reduction.components}-fit{(fit_hash or 'stimuli')[:16]}"


def cached_spatial_features(
    store: Store,
    checkpoint: Checkpoint,
    images: np.ndarray,
    stimulus_hash: str,
    reductions: dict,
    *,
    seed: int,
    fit_images: np.ndarray | None = None,
    fit_hash: str | None = None,
    batch_size: int = 64,
    progress: ProgressFn | None = None,
    device: str = "cpu",
    max_bytes: int = MAX_FEATURE_BYTES,
) -> dict[str, np.ndarray]:
    """:func:`extract_spatial_features`, read from the store cache when there, else computed and cached."""
    keys = {layer: feature_cache_key(checkpoint.sha256, stimulus_hash, layer, "", 0,
                                     tag=spatial_tag(r, seed, fit_hash if fit_images is not None else None))
            for layer, r in reductions.items()}
    found = {layer: np.load(io.BytesIO(store.get_bytes(key)), allow_pickle=False)
             for layer, key in keys.items() if store.exists(key)}
    missing = {layer: r for layer, r in reductions.items() if layer not in found}
    if missing:
        fresh = extract_spatial_features(
            checkpoint.build(), images, missing, input_size=checkpoint.input_size, mean=checkpoint.mean,
            std=checkpoint.std, seed=seed, fit_images=fit_images, batch_size=batch_size, progress=progress,
            max_bytes=max_bytes, device=device,
        )
        for layer, array in fresh.items():
            store.put_bytes(keys[layer], _npy_bytes(array))
        found.update(fresh)
    return {layer: found[layer] for layer in reductions}


def feature_cache_key(checkpoint_sha: str, stimulus_hash: str, layer: str, pooling: str, grid: int,
                      tag: str | None = None) -> str:
    tag = tag or (f"grid{grid}" if pooling == "grid" else pooling)
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
