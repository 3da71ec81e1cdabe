"""Depth probe: how linearly a frozen backbone's feature map encodes the depth of each pixel.

The readout is the linear decoder of published probing evaluations: a 1x1 convolution from one feature
map (C channels at stride s) to one depth value, bilinearly upsampled to the depth map's resolution.
Bilinear upsampling is linear and its weights sum to one, so the readout equals a linear map of the
*upsampled* features; it is therefore fitted in closed form, by ridge regression of depth on the features
bilinearly sampled at ``pixels_per_image`` random valid pixels of each fitting image
(``torch.nn.functional.grid_sample``, which samples exactly as ``interpolate(..., align_corners=False)``
upsamples), and applied as conv-then-upsample to every valid pixel of the held-out images. No SGD, no
learning-rate choice: the fit is the least-squares optimum of that decoder (plus the ridge term).

Reported: RMSE in metres over every valid held-out pixel (pooled), the mean of per-image RMSEs, the
absolute relative error, and the baseline of predicting the fitting pixels' mean depth everywhere.

Data:

- ``renders``: a procsynth/morphsynth dataset's ``depth.png`` (16-bit millimetres,
  :func:`services.render.api.decode_depth`); background pixels (no object: infinite depth) are masked
  out; fitted on the train split, scored on the val split.
- ``nyu_labeled_mat``: NYU-Depth v2's labeled set as distributed, ``nyu_depth_v2_labeled.mat`` (MATLAB
  v7.3 = HDF5, read with h5py: ``images`` (1449, 3, 640, 480) uint8 and ``depths`` (1449, 640, 480) metres,
  stored transposed), with the official split of ``splits.mat`` (``trainNdxs`` 795 / ``testNdxs`` 654,
  1-based; scipy.io.loadmat). Pixels with depth 0 or beyond ``max_depth_m`` (default 10 m) are left out; no crop.
- ``depth_folder``: ``<path>/train`` and ``<path>/test``, each ``<name>.png`` (or .jpg) with
  ``<name>.depth.npy`` (float metres, same height and width; 0, NaN or inf = no depth).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from services.common.errors import ObjectNotFoundError, SpecError
from services.common.spec.evaluation import DepthProbeSpec
from services.common.spec.experiment import ExperimentSpec
from services.common.store import Store
from services.render.api import decode_depth
from services.train.evaluation import Network, load_network, rendered_samples

NYU_MAX_DEPTH_M = 10.0  # the Kinect's range, the usual cap of NYU-Depth v2 evaluations
Pair = tuple[np.ndarray, np.ndarray]  # (h, w, 3) uint8 image, (h', w') float depth in metres (non-finite/0: none)
FeatureFn = Callable[[torch.Tensor], torch.Tensor]  # (N, H, W, 3) uint8 → (N, C, h, w) float


def default_layer(module: nn.Module, model_name: str) -> str:
    """The last feature map before pooling: ``layer4`` (ResNets) or ``features`` (VGG, MobileNet, EfficientNet, ...)."""
    for name in ("layer4", "features"):
        if hasattr(module, name):
            return name
    raise SpecError(f"depth probe: no default feature map for {model_name}; set `layer` to a module name "
                    "whose output is an (N, C, h, w) map")


def feature_fn(net: Network, layer: str, size: int | None = None) -> FeatureFn:
    """A function from uint8 batches to the ``layer`` output of ``net`` (captured by a forward hook)."""
    try:
        module = net.module.get_submodule(layer)
    except AttributeError:
        raise SpecError(f"depth probe: {net.model_name} has no module '{layer}'") from None

    @torch.no_grad()
    def run(images: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        hook = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            net.module(net.inputs(images, size))
        finally:
            hook.remove()
        out = captured[-1]
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            raise SpecError(f"depth probe: module '{layer}' of {net.model_name} does not output an (N, C, h, w) map")
        return out.float().cpu()

    return run


def sample_features(features: torch.Tensor, rows: np.ndarray, cols: np.ndarray, height: int, width: int) -> torch.Tensor:
    """(P, C) features bilinearly upsampled to (height, width) and read at pixels (rows, cols) of one image."""
    x = (2.0 * (torch.as_tensor(cols, dtype=torch.float32) + 0.5) / width) - 1.0
    y = (2.0 * (torch.as_tensor(rows, dtype=torch.float32) + 0.5) / height) - 1.0
    grid = torch.stack([x, y], dim=-1).view(1, 1, -1, 2)
    sampled = nn.functional.grid_sample(features[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return sampled[0, :, 0, :].T


class Ridge:
    """Ridge regression accumulated over batches of rows (sufficient statistics in float64)."""

    def __init__(self):
        self.n = 0
        self.sxx = self.sx = self.sxy = None
        self.sy = self.syy = 0.0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if self.sxx is None:
            c = x.shape[1]
            self.sxx, self.sx, self.sxy = np.zeros((c, c)), np.zeros(c), np.zeros(c)
        self.n += len(y)
        self.sxx += x.T @ x
        self.sx += x.sum(0)
        self.sxy += x.T @ y
        self.sy += float(y.sum())
        self.syy += float((y * y).sum())

    def solve(self, ridge: float) -> tuple[np.ndarray, float]:
        """(weights (C,), bias): the least-squares fit plus ``ridge`` x the mean feature variance x |w|^2."""
        if self.n < 2:
            raise ValueError("depth probe: fewer than 2 valid fitting pixels")
        mu, ybar = self.sx / self.n, self.sy / self.n
        cov = self.sxx / self.n - np.outer(mu, mu)
        cross = self.sxy / self.n - mu * ybar
        scale = max(float(np.trace(cov)) / len(mu), 1e-12)
        w = np.linalg.solve(cov + (ridge * scale + 1e-10 * scale) * np.eye(len(mu)), cross)
        return w, float(ybar - mu @ w)

    @property
    def mean(self) -> float:
        return self.sy / self.n


def _valid(depth: np.ndarray, max_depth: float) -> np.ndarray:
    return np.isfinite(depth) & (depth > 0) & (depth <= max_depth)


def _grouped(pairs: Iterable[Pair], batch_size: int) -> Iterator[list[Pair]]:
    """Consecutive pairs of one image size, at most ``batch_size`` at a time."""
    batch: list[Pair] = []
    for pair in pairs:
        if batch and (len(batch) == batch_size or pair[0].shape != batch[0][0].shape):
            yield batch
            batch = []
        batch.append(pair)
    if batch:
        yield batch


def fit_depth_probe(features_of: FeatureFn, train: Iterable[Pair], test: Iterable[Pair], *, ridge: float = 1e-3,
                    pixels_per_image: int = 256, max_depth_m: float = math.inf, batch_size: int = 32, seed: int = 0) -> dict:
    """Fit the linear readout on ``train`` pairs, score it on ``test`` pairs (see the module docstring)."""
    rng = np.random.default_rng(seed)
    acc, channels, shape, train_images = Ridge(), None, None, 0
    for batch in _grouped(train, batch_size):
        maps = features_of(torch.from_numpy(np.stack([image for image, _ in batch])))
        channels, shape = maps.shape[1], tuple(maps.shape[2:])
        for feature, (_, depth) in zip(maps, batch):
            rows, cols = np.nonzero(_valid(depth, max_depth_m))
            if not len(rows):
                continue
            pick = rng.choice(len(rows), size=min(pixels_per_image, len(rows)), replace=False)
            acc.add(sample_features(feature, rows[pick], cols[pick], *depth.shape).numpy(), depth[rows[pick], cols[pick]])
            train_images += 1
    if acc.n == 0:
        raise ValueError("depth probe: no fitting image has a valid depth pixel")
    w, b = acc.solve(ridge)
    weight = torch.from_numpy(w).float().view(1, -1, 1, 1)
    sq = sq_base = abs_rel = 0.0
    count = test_images = 0
    per_image = []
    for batch in _grouped(test, batch_size):
        maps = features_of(torch.from_numpy(np.stack([image for image, _ in batch])))
        low = nn.functional.conv2d(maps, weight) + b  # the 1x1 convolution, at feature resolution
        for prediction, (_, depth) in zip(low, batch):
            valid = _valid(depth, max_depth_m)
            if not valid.any():
                continue
            up = nn.functional.interpolate(prediction[None], size=depth.shape, mode="bilinear",
                                           align_corners=False)[0, 0].numpy()
            error = up[valid] - depth[valid]
            sq += float((error**2).sum())
            sq_base += float(((acc.mean - depth[valid]) ** 2).sum())
            abs_rel += float((np.abs(error) / depth[valid]).sum())
            count += int(valid.sum())
            per_image.append(math.sqrt(float((error**2).mean())))
            test_images += 1
    if count == 0:
        raise ValueError("depth probe: no held-out image has a valid depth pixel")
    return {"rmse_m": math.sqrt(sq / count), "baseline_rmse_m": math.sqrt(sq_base / count),
            "rmse_image_mean_m": float(np.mean(per_image)), "abs_rel": abs_rel / count,
            "mean_depth_m": acc.mean, "train_images": train_images, "train_pixels": acc.n,
            "test_images": test_images, "test_pixels": count, "feature_channels": int(channels),
            "feature_shape": list(shape), "ridge": ridge}


# -- data sources --------------------------------------------------------------------------
def render_pairs(store: Store, dataset_id: str, split: str, limit: int) -> Iterator[Pair]:
    for sample in rendered_samples(store, dataset_id, split, members=("depth.png",), limit=limit):
        if sample.get("depth.png") is None:
            raise SpecError(f"depth probe: dataset {dataset_id} stores no depth.png (render.outputs)")
        yield sample["rgb"], decode_depth(sample["depth.png"])


def nyu_pairs(mat_path: str, splits_path: str, split: str, limit: int) -> Iterator[Pair]:
    """NYU-Depth v2 labeled pairs of the official ``split`` ("train" or "test"), as (480, 640, 3) and (480, 640)."""
    import h5py
    from scipy.io import loadmat

    for p in (mat_path, splits_path):
        if not Path(p).is_file():
            raise ObjectNotFoundError(f"depth probe: {p} not found (NYU-Depth v2: nyu_depth_v2_labeled.mat and splits.mat)")
    splits = loadmat(splits_path)
    key = "trainNdxs" if split == "train" else "testNdxs"
    if key not in splits:
        raise SpecError(f"depth probe: {splits_path} has no {key} (is it NYU-Depth v2's splits.mat?)")
    indices = np.asarray(splits[key]).ravel().astype(int) - 1
    with h5py.File(mat_path, "r") as mat:
        if "images" not in mat or "depths" not in mat:
            raise SpecError(f"depth probe: {mat_path} lacks images/depths (is it nyu_depth_v2_labeled.mat?)")
        for i in indices[:limit]:
            image = np.ascontiguousarray(np.asarray(mat["images"][i]).transpose(2, 1, 0))  # (3, W, H) → (H, W, 3)
            depth = np.asarray(mat["depths"][i], dtype=np.float32).T
            yield image.astype(np.uint8), depth


def folder_pairs(root: str, split: str, limit: int) -> Iterator[Pair]:
    from PIL import Image

    folder = Path(root) / split
    if not folder.is_dir():
        raise ObjectNotFoundError(f"depth probe: no folder {folder} (expected {root}/train and {root}/test with "
                                  "<name>.png and <name>.depth.npy)")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")
                    and not p.name.endswith(".depth.png"))
    for path in images[:limit]:
        depth_path = path.with_name(path.stem + ".depth.npy")
        if not depth_path.is_file():
            raise ObjectNotFoundError(f"depth probe: {path} has no depth map {depth_path.name} beside it")
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
        depth = np.load(depth_path, allow_pickle=False).astype(np.float32)
        if depth.shape != rgb.shape[:2]:
            raise SpecError(f"depth probe: {depth_path.name} is {depth.shape}, its image {rgb.shape[:2]}")
        yield rgb, depth


def evaluate_depth_probe(spec: ExperimentSpec, entry: DepthProbeSpec, store: Store, run: str) -> dict:
    """The depth-probe result of run ``run`` under ``entry`` (JSON-able; see docs/evaluation.md)."""
    net = load_network(spec, store, run, input_size=entry.input_size)
    layer = entry.layer or default_layer(net.module, net.model_name)
    if entry.kind == "renders":
        did = spec.dataset_id(entry.dataset)
        train, test = (render_pairs(store, did, s, entry.max_images) for s in ("train", "val"))
    elif entry.kind == "nyu_labeled_mat":
        train, test = (nyu_pairs(entry.path, entry.splits_path, s, entry.max_images) for s in ("train", "test"))
    else:
        train, test = (folder_pairs(entry.path, s, entry.max_images) for s in ("train", "test"))
    max_depth = entry.max_depth_m or (NYU_MAX_DEPTH_M if entry.kind == "nyu_labeled_mat" else math.inf)
    result = fit_depth_probe(feature_fn(net, layer), train, test, ridge=entry.ridge,
                             pixels_per_image=entry.pixels_per_image, max_depth_m=max_depth,
                             batch_size=entry.batch_size, seed=entry.seed)
    result.update(kind=entry.kind, layer=layer, model=net.model_name, input_size=net.input_size,
                  max_depth_m=None if math.isinf(max_depth) else max_depth)
    return result
