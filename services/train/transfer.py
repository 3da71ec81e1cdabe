"""Transfer: fine-tuning and linear probes of pre-trained runs (and a from-scratch baseline).

Targets (``TargetSpec.kind``), all read offline, never downloaded:

- ``digits``: scikit-learn's bundled handwritten digits (1797 8×8 grey images, 10
  classes), upscaled to the model's input size and repeated to 3 channels;
- ``imagefolder``: ``path/<class>/<image>`` (torchvision ``ImageFolder``);
- ``cifar10`` / ``cifar100``: the standard python-pickle layout under ``path``
  (``cifar-10-batches-py`` / ``cifar-100-python``).

Held-out split: digits and image folders are split stratified by class with
``test_fraction``, fixed by the transfer's seed; CIFAR uses its official test set.

Modes: ``finetune`` trains every layer; ``linear_probe`` freezes the backbone (in eval
mode, so BatchNorm statistics stay put) and trains a new classification head. The head
is found generically (:func:`services.train.models.head_parameter_names`). A probe
computes the backbone's features once per (source, target) and trains the head on them
(:func:`probe_features`) whenever the head is the model's last step (checked
numerically); otherwise it trains through the frozen network. Each source
(every listed pre-training run, plus ``scratch`` — the same architecture, randomly
initialised) is combined with every target and mode.

Hyper-parameter search (``TransferSpec.search``): stratified k-fold cross-validation on
the training split over the grid lr × weight_decay; the setting with the best mean
validation top-1 is refit on the whole training split and scored on the held-out split.
Without a search, ``TransferSpec.optim`` is used as is.

Store layout, ``transfer_id = <transfer name>-<hash of the transfer spec, its targets
and the run ids it starts from>``::

    runs/<transfer_id>/results/<source>--<target>--<mode>.json   one per combination (resume unit)
    runs/<transfer_id>/transfer.json    {"transfer_id", "spec", "results": [...]} (all of the above)
    runs/<transfer_id>/done.json        written last

A result: ``{"source", "source_run_id", "model", "target", "mode", "input_size",
"lr", "weight_decay", "epochs", "train_samples", "test_samples", "train_top1",
"test_top1", "test_loss", "cached_features", "search": null | {"folds", "grid": [{"lr",
"weight_decay", "fold_top1": [...], "mean_top1"}], "best": {...}}}``.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from services.common.errors import FlatlandError, ObjectNotFoundError
from services.common.seeds import derive_rng, derive_seed
from services.common.spec.experiment import ExperimentSpec, content_hash
from services.common.spec.train import OptimSpec, TargetSpec, TransferSpec
from services.common.store import Store
from services.train.data import IMAGENET_MEAN, IMAGENET_STD, to_model_input
from services.train.loop import DivergedError, lr_factor, run_prefix
from services.train.models import build_model, head_parameter_names, load_verified_checkpoint, logits_of

Progress = Callable[[str, int, int], None]
SCRATCH = "scratch"


# -- targets ----------------------------------------------------------------------------
@dataclass
class TargetData:
    """A target's fixed train / held-out split; items are ((S, S, 3) uint8 tensor, int label)."""

    name: str
    train: Dataset
    test: Dataset
    train_labels: np.ndarray  # (n_train,) int, for stratified folds
    num_classes: int


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    train, test = train_test_split(indices, test_size=test_fraction, stratify=labels, random_state=seed % 2**32)
    return np.sort(train), np.sort(test)


class _ResizeToTensor:
    """PIL image → (size, size, 3) uint8 tensor (picklable, for DataLoader workers)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image):
        from PIL import Image

        image = image.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
        return torch.from_numpy(np.array(image))


def load_digits_target(target: TargetSpec, input_size: int, seed: int) -> TargetData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]  # (n, 1, 8, 8) in [0, 1]
    images = nn.functional.interpolate(images, size=(input_size, input_size), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).expand(-1, -1, -1, 3)
    labels = digits.target.astype(np.int64)
    train, test = _stratified_split(labels, target.test_fraction, derive_seed(seed, "split", target.name))
    data = TensorDataset(images.contiguous(), torch.from_numpy(labels))
    return TargetData(target.name, Subset(data, train), Subset(data, test), labels[train], 10)


def load_imagefolder_target(target: TargetSpec, input_size: int, seed: int) -> TargetData:
    from torchvision.datasets import ImageFolder

    root = Path(target.path or "")
    if not root.is_dir():
        raise ObjectNotFoundError(f"target '{target.name}': image folder {root} does not exist")
    try:
        folder = ImageFolder(str(root), transform=_ResizeToTensor(input_size))
    except (FileNotFoundError, RuntimeError) as exc:
        raise FlatlandError(f"target '{target.name}': {root} is not an image folder (root/<class>/<image>): {exc}") from None
    labels = np.asarray(folder.targets, dtype=np.int64)
    if len(folder.classes) < 2:
        raise FlatlandError(f"target '{target.name}': {root} needs at least 2 class folders, found {folder.classes}")
    train, test = _stratified_split(labels, target.test_fraction, derive_seed(seed, "split", target.name))
    return TargetData(target.name, Subset(folder, train), Subset(folder, test), labels[train], len(folder.classes))


def _cifar_loader(kind: str):
    def load(target: TargetSpec, input_size: int, seed: int) -> TargetData:
        from torchvision import datasets

        cls = datasets.CIFAR10 if kind == "cifar10" else datasets.CIFAR100
        transform = _ResizeToTensor(input_size)
        try:
            train = cls(target.path, train=True, download=False, transform=transform)
            test = cls(target.path, train=False, download=False, transform=transform)
        except RuntimeError as exc:
            raise ObjectNotFoundError(
                f"target '{target.name}': no {kind} data under {target.path} (expected the standard python "
                f"layout, e.g. {cls.base_folder}/; downloads are disabled): {exc}") from None
        return TargetData(target.name, train, test, np.asarray(train.targets, dtype=np.int64), len(train.classes))

    return load


TARGET_LOADERS: dict[str, Callable[[TargetSpec, int, int], TargetData]] = {
    "digits": load_digits_target,
    "imagefolder": load_imagefolder_target,
    "cifar10": _cifar_loader("cifar10"),
    "cifar100": _cifar_loader("cifar100"),
}


def load_target(target: TargetSpec, input_size: int, seed: int) -> TargetData:
    """The target's split; with ``train_per_class``, a seeded per-class subset of the training split."""
    data = TARGET_LOADERS[target.kind](target, input_size, seed)
    if target.train_per_class is not None:
        rng = derive_rng(seed, "few-shot", target.name)
        keep = []
        for label in np.unique(data.train_labels):
            members = np.flatnonzero(data.train_labels == label)
            keep.append(rng.permutation(members)[: target.train_per_class])
        keep = np.sort(np.concatenate(keep))
        data.train = Subset(data.train, keep)
        data.train_labels = data.train_labels[keep]
    return data


# -- sources ----------------------------------------------------------------------------
@dataclass
class Source:
    """Where a transferred model starts: a pre-trained checkpoint, or random weights."""

    name: str
    run_id: str | None
    model: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    state_dict: dict | None  # None: from scratch


def sources_for(spec: ExperimentSpec, transfer: TransferSpec, store: Store) -> list[Source]:
    """Each listed pre-trained run (finished: done.json present), then the scratch baseline(s)."""
    sources = []
    for name in transfer.pretrained:
        run_id = spec.run_id(name)
        if not store.exists(f"{run_prefix(run_id)}/done.json"):
            raise ObjectNotFoundError(
                f"transfer '{transfer.name}' needs pre-training run '{name}' ({run_id}), which has not finished: "
                f"no {run_prefix(run_id)}/done.json")
        ckpt = load_verified_checkpoint(store, run_prefix(run_id))  # IntegrityError naming final.pt if damaged
        sources.append(Source(name, run_id, ckpt["model"], transfer.input_size or ckpt["input_size"],
                              tuple(ckpt["mean"]), tuple(ckpt["std"]), ckpt["state_dict"]))
    models = list(dict.fromkeys((s.model, s.input_size) for s in sources)) or [(transfer.model, transfer.input_size or 224)]
    for model, size in models:
        name = SCRATCH if len(models) == 1 else f"{SCRATCH}-{model}-{size}"
        sources.append(Source(name, None, model, size, IMAGENET_MEAN, IMAGENET_STD, None))
    return sources


def prepare_model(source: Source, num_classes: int, mode: str) -> nn.Module:
    """The source's architecture with a new ``num_classes`` head; backbone weights copied in.

    For ``linear_probe`` only the head keeps ``requires_grad``.
    """
    model = build_model(source.model, num_classes, source.input_size)
    head = head_parameter_names(source.model, source.input_size)
    if source.state_dict is not None:
        backbone = {k: v for k, v in source.state_dict.items() if k not in head}
        missing, unexpected = model.load_state_dict(backbone, strict=False)
        if set(missing) - head or unexpected:
            raise FlatlandError(f"checkpoint of '{source.name}' does not match {source.model}: "
                                f"missing {sorted(set(missing) - head)[:5]}, unexpected {unexpected[:5]}")
    if mode == "linear_probe":
        for name, param in model.named_parameters():
            param.requires_grad = name in head
    return model


# -- fitting ----------------------------------------------------------------------------
def _evaluate(model: nn.Module, data: Dataset, source: Source, batch_size: int, device) -> tuple[float, float]:
    """(top-1, mean loss) of ``model`` on ``data``."""
    model.eval()
    correct, loss_sum, count = 0, 0.0, 0
    with torch.no_grad():
        for images, labels in DataLoader(data, batch_size=max(batch_size, 128), shuffle=False):
            logits = logits_of(model(to_model_input(images, device, mean=source.mean, std=source.std))).float()
            labels = labels.to(device)
            loss_sum += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(1) == labels).sum())
            count += len(labels)
    return correct / max(count, 1), loss_sum / max(count, 1)


def fit(source: Source, mode: str, train: Dataset, num_classes: int, *, lr: float, weight_decay: float,
        optim: OptimSpec, epochs: int, batch_size: int, seed: int, device: torch.device) -> nn.Module:
    """Train a copy of ``source`` on ``train``; deterministic given ``seed`` on the CPU."""
    torch.manual_seed(seed)
    model = prepare_model(source, num_classes, mode).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=optim.momentum, weight_decay=weight_decay)
    order = torch.Generator().manual_seed(seed)
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=order, drop_last=len(train) > batch_size)
    steps = max(1, len(loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step / steps, optim, epochs))
    criterion = nn.CrossEntropyLoss(label_smoothing=optim.label_smoothing)
    for _epoch in range(epochs):
        model.train(mode == "finetune")  # a probe keeps the backbone's BatchNorm statistics frozen
        for images, labels in loader:
            logits = logits_of(model(to_model_input(images, device, mean=source.mean, std=source.std)))
            loss = criterion(logits, labels.to(device))
            if not torch.isfinite(loss):
                raise DivergedError(f"transfer of '{source.name}' ({mode}, lr={lr}, weight_decay={weight_decay}): "
                                    f"loss became {loss.item()}; lower the learning rate or set optim.grad_clip_norm")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if optim.grad_clip_norm is not None:
                nn.utils.clip_grad_norm_(params, optim.grad_clip_norm)
            optimizer.step()
            scheduler.step()
    return model


# -- linear probes on cached features ---------------------------------------------------
@dataclass
class ProbeFeatures:
    """Backbone outputs (the head's inputs) of a target's splits, computed once per source.

    With a frozen backbone in eval mode and no augmentation these never change, so a
    probe trains only the head on them: epochs and cross-validation folds cost a pass
    over a linear layer instead of the whole network.
    """

    head: str  # module name of the head, e.g. "fc", "classifier.3", "heads.head"
    train: TensorDataset
    test: TensorDataset


def _head_module_name(source: Source) -> str | None:
    names = {key.rsplit(".", 1)[0] for key in head_parameter_names(source.model, source.input_size)}
    return names.pop() if len(names) == 1 else None


def probe_features(source: Source, data: TargetData, batch_size: int, device) -> ProbeFeatures | None:
    """Features for a cached-feature probe, or None when the model's head is not its last step.

    The shortcut is taken only when applying the head to the captured input reproduces
    the model's logits (true for ResNets, ViTs, MobileNets, ...; not for SqueezeNet,
    whose head convolution is followed by pooling).
    """
    head_name = _head_module_name(source)
    if head_name is None:
        return None
    model = prepare_model(source, data.num_classes, "linear_probe").to(device).eval()
    head = model.get_submodule(head_name)
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach()))
    try:
        splits = []
        with torch.no_grad():
            for dataset in (data.train, data.test):
                features, labels, checked = [], [], False
                for images, batch_labels in DataLoader(dataset, batch_size=max(batch_size, 128), shuffle=False):
                    captured.clear()
                    logits = logits_of(model(to_model_input(images, device, mean=source.mean, std=source.std)))
                    if not checked:
                        replayed = head(captured[0]) if len(captured) == 1 else None
                        if replayed is None or replayed.shape != logits.shape or not torch.allclose(replayed, logits, atol=1e-5):
                            return None
                        checked = True
                    features.append(captured[0].cpu())
                    labels.append(batch_labels)
                splits.append(TensorDataset(torch.cat(features), torch.cat(labels)))
    finally:
        hook.remove()
    return ProbeFeatures(head_name, splits[0], splits[1])


def fit_head(source: Source, features: ProbeFeatures, train: Dataset, num_classes: int, *, lr: float,
             weight_decay: float, optim: OptimSpec, epochs: int, batch_size: int, seed: int, device) -> nn.Module:
    """Train a new head on cached features; the same initialisation and schedule as :func:`fit`."""
    torch.manual_seed(seed)
    head = prepare_model(source, num_classes, "linear_probe").get_submodule(features.head).to(device)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=optim.momentum, weight_decay=weight_decay)
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed),
                        drop_last=len(train) > batch_size)
    steps = max(1, len(loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step / steps, optim, epochs))
    criterion = nn.CrossEntropyLoss(label_smoothing=optim.label_smoothing)
    head.train()
    for _epoch in range(epochs):
        for inputs, labels in loader:
            loss = criterion(head(inputs.to(device)), labels.to(device))
            if not torch.isfinite(loss):
                raise DivergedError(f"linear probe of '{source.name}' (lr={lr}, weight_decay={weight_decay}): "
                                    f"loss became {float(loss)}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return head


def _evaluate_head(head: nn.Module, data: Dataset, device) -> tuple[float, float]:
    head.eval()
    correct, loss_sum, count = 0, 0.0, 0
    with torch.no_grad():
        for inputs, labels in DataLoader(data, batch_size=1024, shuffle=False):
            logits = head(inputs.to(device)).float()
            labels = labels.to(device)
            loss_sum += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(1) == labels).sum())
            count += len(labels)
    return correct / max(count, 1), loss_sum / max(count, 1)


def _trainer(source: Source, mode: str, data: TargetData, transfer: TransferSpec, device):
    """(fit_and_score(train_indices, eval_set, lr, wd, seed) -> (top1, loss, train_top1), eval sets) for one combination."""
    features = probe_features(source, data, transfer.batch_size, device) if mode == "linear_probe" else None
    common = {"optim": transfer.optim, "epochs": transfer.epochs, "batch_size": transfer.batch_size, "device": device}
    if features is not None:
        def run(train_idx, evaluate_on, lr, wd, seed):
            train = Subset(features.train, train_idx)
            head = fit_head(source, features, train, data.num_classes, lr=lr, weight_decay=wd, seed=seed, **common)
            return _evaluate_head(head, evaluate_on, device), _evaluate_head(head, train, device)[0]
        return run, features.train, features.test

    def run(train_idx, evaluate_on, lr, wd, seed):
        train = Subset(data.train, train_idx)
        model = fit(source, mode, train, data.num_classes, lr=lr, weight_decay=wd, seed=seed, **common)
        return (_evaluate(model, evaluate_on, source, transfer.batch_size, device),
                _evaluate(model, train, source, transfer.batch_size, device)[0])
    return run, data.train, data.test


def cross_validate(run, train_set: Dataset, labels: np.ndarray, transfer: TransferSpec, seed: int) -> dict:
    """k-fold grid search on the training split; every fold's score is kept."""
    from sklearn.model_selection import StratifiedKFold

    search = transfer.search
    assert search is not None
    folds = StratifiedKFold(n_splits=search.folds, shuffle=True, random_state=seed % 2**32)
    splits = list(folds.split(np.zeros(len(labels)), labels))
    grid = []
    for lr, wd in itertools.product(search.lr, search.weight_decay):
        scores = [run(fit_idx, Subset(train_set, val_idx), lr, wd, derive_seed(seed, "fold", k))[0][0]
                  for k, (fit_idx, val_idx) in enumerate(splits)]
        grid.append({"lr": lr, "weight_decay": wd, "fold_top1": scores, "mean_top1": float(np.mean(scores))})
    best = max(grid, key=lambda g: g["mean_top1"])  # first of equals: grid order decides ties
    return {"folds": search.folds, "grid": grid, "best": {"lr": best["lr"], "weight_decay": best["weight_decay"],
                                                          "mean_top1": best["mean_top1"]}}


def transfer_id(spec: ExperimentSpec, transfer: TransferSpec) -> str:
    targets = [t for t in spec.targets if t.name in transfer.targets]
    inputs = {"transfer": transfer, "targets": targets, "pretrained": [spec.run_id(n) for n in transfer.pretrained],
              "seed": spec.seed}
    return f"{transfer.name}-{content_hash(inputs)}"


def run_transfer(spec: ExperimentSpec, name: str, store: Store, *, progress: Progress | None = None,
                 device: str | torch.device | None = None,
                 should_stop: Callable[[], bool] | None = None) -> dict:
    """Every (source, target, mode) of the transfer ``name``; resumable per combination."""
    matches = [t for t in spec.transfer if t.name == name]
    if not matches:
        raise FlatlandError(f"no transfer named '{name}' (known: {[t.name for t in spec.transfer]})")
    transfer = matches[0]
    tid = transfer_id(spec, transfer)
    prefix = run_prefix(tid)
    if store.exists(f"{prefix}/done.json"):
        return store.get_json(f"{prefix}/transfer.json")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sources = sources_for(spec, transfer, store)
    targets = {t.name: t for t in spec.targets}
    combos = [(s, targets[t], m) for s in sources for t in transfer.targets for m in transfer.modes]
    task = f"transfer:{transfer.name}"
    results = []
    load = functools.cache(lambda target_name, size: load_target(targets[target_name], size, transfer.seed))
    for done, (source, target, mode) in enumerate(combos):
        if progress:
            progress(task, done, len(combos))
        if should_stop is not None and should_stop():
            raise FlatlandError(f"transfer {tid} cancelled")
        key = f"{prefix}/results/{source.name}--{target.name}--{mode}.json"
        if store.exists(key):
            results.append(store.get_json(key))
            continue
        started = time.time()
        data = load(target.name, source.input_size)
        seed = derive_seed(transfer.seed, "transfer", source.name, target.name, mode)
        run, train_set, test_set = _trainer(source, mode, data, transfer, device)
        search = cross_validate(run, train_set, data.train_labels, transfer, seed) if transfer.search else None
        lr = search["best"]["lr"] if search else transfer.optim.lr
        wd = search["best"]["weight_decay"] if search else transfer.optim.weight_decay
        (test_top1, test_loss), train_top1 = run(np.arange(len(train_set)), test_set, lr, wd, derive_seed(seed, "final"))
        result = {"source": source.name, "source_run_id": source.run_id, "model": source.model,
                  "target": target.name, "target_kind": target.kind, "mode": mode, "input_size": source.input_size,
                  "lr": lr, "weight_decay": wd, "epochs": transfer.epochs, "train_samples": len(data.train),
                  "test_samples": len(data.test), "train_top1": train_top1, "test_top1": test_top1,
                  "test_loss": test_loss, "search": search, "cached_features": mode == "linear_probe" and train_set is not data.train,
                  "seconds": time.time() - started}
        store.put_json(key, result)
        results.append(result)
    if progress:
        progress(task, len(combos), len(combos))
    summary = {"transfer_id": tid, "spec": transfer.model_dump(mode="json"), "results": results}
    store.put_json(f"{prefix}/transfer.json", summary)
    store.put_json(f"{prefix}/done.json", {"transfer_id": tid, "results": len(results)})
    return summary
