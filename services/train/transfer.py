"""Transfer: fine-tuning and linear probes of pre-trained runs (and a from-scratch baseline).

Targets and their splits are :mod:`services.train.targets` (digits, image folders with a
random or the official split, CIFAR, Pascal VOC 2012, Omniglot), read offline.

Protocol (``TransferSpec``, or one of its presets: ``fractaldb`` is FractalDB's fine-tuning,
``basic`` this project's earlier settings). Images are resized (straight to the input size,
or with ``augment.resize`` so the shorter side has that length); fine-tuning then trains on
input-size crops (random with ``augment.random_crop``) and optional flips, and every
evaluation, like a linear probe's training, uses the centre crop.

Modes: ``finetune`` trains every layer; ``linear_probe`` freezes the backbone (in eval
mode, so BatchNorm statistics stay put) and trains a new classification head. The head
is found generically (:func:`services.train.models.head_parameter_names`). A probe
computes the backbone's features once per (source, target) and trains the head on them
(:func:`probe_features`) whenever the head is the model's last step (checked
numerically); otherwise it trains through the frozen network. Each source
(every listed pre-training run, plus ``scratch`` — the same architecture, randomly
initialised) is combined with every target and mode.

Single-label targets train with cross-entropy and report top-1; multi-label ones (VOC)
with a sigmoid and binary cross-entropy per class, reporting per-class average precision
and their mean (mAP) as the VOC devkit computes them (:func:`voc_average_precision`).
Segmentation targets (COCO and VOC label maps) train a segmentation network whose backbone
is the source's and whose head is new, and report mIoU and the other segmentation metrics
(:mod:`services.train.segtransfer`).

Scale: data loader workers, pinned memory, mixed precision and channels-last on a GPU (as
pre-training), and the final fit of each combination checkpoints every epoch
(``runs/<transfer_id>/checkpoints/<source>--<target>--<mode>.pt``) and resumes from it.

Hyper-parameter search (``TransferSpec.search``): k-fold cross-validation on the training
split (stratified for single-label targets) over the grid lr × weight_decay; the setting
with the best mean validation score is refit on the whole training split and scored on
the held-out split. Without a search, ``TransferSpec.optim`` is used as is.

Store layout, ``transfer_id = <transfer name>-<hash of the transfer spec, its targets
and the run ids it starts from>``::

    runs/<transfer_id>/results/<source>--<target>--<mode>.json   one per combination (resume unit)
    runs/<transfer_id>/search/<source>--<target>--<mode>.json    its finished search, if any
    runs/<transfer_id>/transfer.json    {"transfer_id", "spec", "results": [...]} (all of the above)
    runs/<transfer_id>/done.json        written last

A result: ``{"source", "source_run_id", "model", "target", "target_kind", "mode",
"input_size", "lr", "weight_decay", "epochs", "train_samples", "test_samples", "metric"
("top1" or "map"), "test_score", "train_score", "test_loss", "train_top1" and "test_top1"
(single-label), "test_map" and "test_ap" ({class: AP}, multi-label), "cached_features",
"test_iou_macro", "test_segmentation" and "train_segmentation" (every segmentation metric with
its bootstrap interval), "segmentation_model", "examples" (the key of a PNG of held-out images,
label maps and predictions: ``runs/<transfer_id>/examples/<combo>.png``) (segmentation targets;
metric "iou_macro"),
"search": null | {"folds", "metric", "grid": [{"lr", "weight_decay", "fold_<metric>": [...],
"mean_<metric>"}], "best": {...}}}``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from services.common.errors import FlatlandError, ObjectNotFoundError
from services.common.seeds import derive_seed
from services.common.spec.experiment import ExperimentSpec, content_hash, without_later_defaults
from services.common.spec.train import OptimSpec, TransferSpec
from services.common.store import Store
from services.train.data import IMAGENET_MEAN, IMAGENET_STD
from services.train.loop import DivergedError, lr_factor, run_prefix
from services.train.models import (
    build_model, head_parameter_names, load_checkpoint, load_verified_checkpoint, logits_of, save_checkpoint,
)
from services.train.runtime import Runtime, Trainer, _runtime, train_model  # noqa: F401  (re-exported)
from services.train.segtransfer import segmentation_model_for
from services.train.targets import IGNORE, TARGET_LOADERS, TargetData, load_target, view  # noqa: F401  (re-exported)

Progress = Callable[[str, int, int], None]
SCRATCH = "scratch"


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
    if transfer.mean is not None:  # the protocol's normalisation (FractalDB fine-tunes with ImageNet's)
        sources = [dataclasses.replace(s, mean=tuple(transfer.mean), std=tuple(transfer.std)) for s in sources]
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


# -- scores -----------------------------------------------------------------------------
def voc_average_precision(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Average precision of one class as the VOC devkit (2010 and later) computes it.

    The area under the precision-recall curve with precision made monotone (at each
    recall, the best precision at that recall or above); entries labelled ``IGNORE``
    (difficult-only) are left out, as the devkit leaves out its 0 labels. Tied scores
    count as one threshold (scikit-learn's convention). None when no positive is left.
    """
    from sklearn.metrics import precision_recall_curve

    keep = labels != IGNORE
    truth, scores = labels[keep] > 0, scores[keep]
    if not truth.any():
        return None
    precision, recall, _ = precision_recall_curve(truth, scores)
    precision, recall = precision[::-1], recall[::-1]  # recall rising from 0 to 1
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(np.diff(recall) * envelope[1:]))


def _criterion(multilabel: bool, label_smoothing: float = 0.0):
    if not multilabel:
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def masked_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weight = (labels != IGNORE).float()
        loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.clamp(min=0), weight=weight,
                                                              reduction="sum")
        return loss / weight.sum().clamp(min=1)

    return masked_bce


def _scores(logits: list[torch.Tensor], labels: list[torch.Tensor], multilabel: bool, classes: list[str]) -> dict:
    """The metrics of collected logits: top-1, or per-class AP and mAP; and the mean loss."""
    logits_all, labels_all = torch.cat(logits).float(), torch.cat(labels)
    count = max(len(labels_all), 1)
    if not multilabel:
        loss = float(nn.functional.cross_entropy(logits_all, labels_all, reduction="sum")) / count
        return {"top1": float((logits_all.argmax(1) == labels_all).float().mean()) if len(labels_all) else 0.0,
                "loss": loss, "score": None}
    loss = float(_criterion(True)(logits_all, labels_all))
    probs, truth = torch.sigmoid(logits_all).numpy(), labels_all.numpy()
    ap = {name: voc_average_precision(probs[:, k], truth[:, k]) for k, name in enumerate(classes)}
    defined = [v for v in ap.values() if v is not None]
    return {"map": float(np.mean(defined)) if defined else 0.0, "ap": ap, "loss": loss}


def _metric(multilabel: bool) -> str:
    return "map" if multilabel else "top1"


# -- fitting ----------------------------------------------------------------------------
def _evaluate(model: nn.Module, data: Dataset, source: Source, batch_size: int, device, *,
              multilabel: bool = False, classes: list[str] | None = None) -> dict:
    """Metrics of ``model`` on ``data``: ``{"top1", "loss"}`` or ``{"map", "ap", "loss"}``."""
    rt = _runtime(device)
    model.eval()
    logits, labels = [], []
    with torch.no_grad():
        for images, batch_labels in rt.loader(data, max(batch_size, 128)):
            with torch.autocast(rt.device.type, dtype=rt.dtype, enabled=rt.use_amp):
                out = logits_of(model(rt.inputs(images, source)))
            logits.append(out.float().cpu())
            labels.append(batch_labels)
    return _scores(logits, labels, multilabel, classes or [])


def fit(source: Source, mode: str, train: Dataset, num_classes: int, *, lr: float, weight_decay: float,
        optim: OptimSpec, epochs: int, batch_size: int, seed: int, device, multilabel: bool = False,
        checkpoint: Callable[[dict], None] | None = None, resume: dict | None = None,
        stop_after_epoch: int | None = None) -> nn.Module:
    """Train a copy of ``source`` on ``train``; deterministic given ``seed`` on the CPU.

    ``checkpoint(state)`` receives the training state after every epoch; ``resume`` (such a
    state) continues after its epoch with the same result as an uninterrupted fit (each
    epoch re-seeds its data order and augmentation). ``stop_after_epoch`` ends the fit
    early, as a crash would (for tests).
    """
    rt = _runtime(device)
    torch.manual_seed(seed)
    model = rt.place(prepare_model(source, num_classes, mode))
    return train_model(
        model, train, source, rt=rt, criterion=_criterion(multilabel, optim.label_smoothing), logits=logits_of,
        set_train_mode=lambda m: m.train(mode == "finetune"),  # a probe keeps the backbone's BatchNorm statistics
        what=f"transfer of '{source.name}' ({mode}, lr={lr}, weight_decay={weight_decay})", lr=lr, optim=optim,
        epochs=epochs, batch_size=batch_size, seed=seed, weight_decay=weight_decay, checkpoint=checkpoint,
        resume=resume, stop_after_epoch=stop_after_epoch)


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
    whose head convolution is followed by pooling). ``data``'s splits are used as given
    (the evaluation view).
    """
    rt = _runtime(device)
    head_name = _head_module_name(source)
    if head_name is None:
        return None
    model = rt.place(prepare_model(source, data.num_classes, "linear_probe")).eval()
    head = model.get_submodule(head_name)
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach()))
    try:
        splits = []
        with torch.no_grad():
            for dataset in (data.train, data.test):
                features, labels, checked = [], [], False
                for images, batch_labels in rt.loader(dataset, max(batch_size, 128)):
                    captured.clear()
                    # Full precision: the features are computed once and reused by every fit.
                    logits = logits_of(model(rt.inputs(images, source)))
                    if not checked:
                        replayed = head(captured[0]) if len(captured) == 1 else None
                        if replayed is None or replayed.shape != logits.shape or not torch.allclose(replayed, logits, atol=1e-5):
                            return None
                        checked = True
                    features.append(captured[0].float().cpu())
                    labels.append(batch_labels)
                splits.append(TensorDataset(torch.cat(features), torch.cat(labels)))
    finally:
        hook.remove()
    return ProbeFeatures(head_name, splits[0], splits[1])


def fit_head(source: Source, features: ProbeFeatures, train: Dataset, num_classes: int, *, lr: float,
             weight_decay: float, optim: OptimSpec, epochs: int, batch_size: int, seed: int, device,
             multilabel: bool = False, **_ignored) -> nn.Module:
    """Train a new head on cached features; the same initialisation and schedule as :func:`fit`."""
    rt = _runtime(device)
    torch.manual_seed(seed)
    head = prepare_model(source, num_classes, "linear_probe").get_submodule(features.head).to(rt.device)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=optim.momentum, weight_decay=weight_decay)
    drop_last = len(train) > batch_size
    steps = max(1, len(train) // batch_size if drop_last else math.ceil(len(train) / batch_size))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step / steps, optim, epochs))
    criterion = _criterion(multilabel, optim.label_smoothing)
    head.train()
    for epoch in range(epochs):
        order = torch.Generator().manual_seed(derive_seed(seed, "order", epoch))
        for inputs, labels in DataLoader(train, batch_size=batch_size, shuffle=True, generator=order, drop_last=drop_last):
            loss = criterion(head(inputs.to(rt.device)), labels.to(rt.device))
            if not torch.isfinite(loss):
                raise DivergedError(f"linear probe of '{source.name}' (lr={lr}, weight_decay={weight_decay}): "
                                    f"loss became {float(loss)}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return head


def _evaluate_head(head: nn.Module, data: Dataset, device, *, multilabel: bool = False,
                   classes: list[str] | None = None) -> dict:
    rt = _runtime(device)
    head.eval()
    logits, labels = [], []
    with torch.no_grad():
        for inputs, batch_labels in DataLoader(data, batch_size=1024, shuffle=False):
            logits.append(head(inputs.to(rt.device)).float().cpu())
            labels.append(batch_labels)
    return _scores(logits, labels, multilabel, classes or [])


def _trainer(source: Source, mode: str, data: TargetData, transfer: TransferSpec, rt: Runtime) -> Trainer:
    """The fit-and-score function of one combination and the data sets it uses."""
    if data.segmentation:
        from services.train.segtransfer import segmentation_trainer

        return segmentation_trainer(source, mode, data, transfer, rt)
    size = source.input_size
    eval_train = view(data.train, size)
    test = view(data.test, size)
    labels_kw = {"multilabel": data.multilabel, "classes": data.classes}
    common = {"optim": transfer.optim, "epochs": transfer.epochs, "batch_size": transfer.batch_size, "device": rt,
              "multilabel": data.multilabel}
    if mode == "linear_probe":
        features = probe_features(source, dataclasses.replace(data, train=eval_train, test=test), transfer.batch_size, rt)
        if features is not None:
            def run_head(train_idx, evaluate_on, lr, wd, seed, **fit_kw):
                train = Subset(features.train, train_idx)
                head = fit_head(source, features, train, data.num_classes, lr=lr, weight_decay=wd, seed=seed, **common)
                return _evaluate_head(head, evaluate_on, rt, **labels_kw), _evaluate_head(head, train, rt, **labels_kw)
            return Trainer(run_head, features.train, features.train, features.test, True)
        fit_set = eval_train  # a probe through the frozen network also trains on the evaluation view
    else:
        fit_set = view(data.train, size, random_crop=transfer.augment.random_crop,
                       horizontal_flip=transfer.augment.horizontal_flip)

    def run(train_idx, evaluate_on, lr, wd, seed, **fit_kw):
        model = fit(source, mode, Subset(fit_set, train_idx), data.num_classes, lr=lr, weight_decay=wd, seed=seed,
                    **common, **fit_kw)
        return (_evaluate(model, evaluate_on, source, transfer.batch_size, rt, **labels_kw),
                _evaluate(model, Subset(eval_train, train_idx), source, transfer.batch_size, rt, **labels_kw))
    return Trainer(run, fit_set, eval_train, test, False)


def cross_validate(run, train_set: Dataset, labels: np.ndarray, transfer: TransferSpec, seed: int,
                   multilabel: bool = False, metric: str | None = None) -> dict:
    """k-fold grid search on the training split; every fold's score is kept. ``metric`` (default: top-1 or
    mAP) other than those (segmentation's mIoU) means folds are not stratified, as images hold several classes."""
    from sklearn.model_selection import KFold, StratifiedKFold

    search = transfer.search
    assert search is not None
    stratified = not multilabel and metric in (None, "top1")
    metric = metric or _metric(multilabel)
    splitter = StratifiedKFold if stratified else KFold  # folds of a multi-label target cannot be stratified by class
    folds = splitter(n_splits=search.folds, shuffle=True, random_state=seed % 2**32)
    splits = list(folds.split(np.zeros(len(labels)), labels if stratified else None))
    grid = []
    for lr, wd in itertools.product(search.lr, search.weight_decay):
        scores = [run(fit_idx, Subset(train_set, val_idx), lr, wd, derive_seed(seed, "fold", k))[0][metric]
                  for k, (fit_idx, val_idx) in enumerate(splits)]
        grid.append({"lr": lr, "weight_decay": wd, f"fold_{metric}": scores, f"mean_{metric}": float(np.mean(scores))})
    best = max(grid, key=lambda g: g[f"mean_{metric}"])  # first of equals: grid order decides ties
    return {"folds": search.folds, "metric": metric, "grid": grid,
            "best": {"lr": best["lr"], "weight_decay": best["weight_decay"], f"mean_{metric}": best[f"mean_{metric}"]}}


def transfer_id(spec: ExperimentSpec, transfer: TransferSpec) -> str:
    targets = [t for t in spec.targets if t.name in transfer.targets]
    inputs = {"transfer": without_later_defaults(transfer), "targets": targets,
              "pretrained": [spec.run_id(n) for n in transfer.pretrained],
              "seed": spec.seed}
    return f"{transfer.name}-{content_hash(inputs)}"


def run_transfer(spec: ExperimentSpec, name: str, store: Store, *, progress: Progress | None = None,
                 device: str | torch.device | None = None,
                 should_stop: Callable[[], bool] | None = None, stop_after_epoch: int | None = None) -> dict:
    """Every (source, target, mode) of the transfer ``name``; resumable per combination and, within
    a combination's final fit, per epoch. ``stop_after_epoch`` interrupts the first unfinished final
    fit after that epoch, as a crash would (for tests)."""
    matches = [t for t in spec.transfer if t.name == name]
    if not matches:
        raise FlatlandError(f"no transfer named '{name}' (known: {[t.name for t in spec.transfer]})")
    transfer = matches[0]
    tid = transfer_id(spec, transfer)
    prefix = run_prefix(tid)
    if store.exists(f"{prefix}/done.json"):
        return store.get_json(f"{prefix}/transfer.json")
    rt = Runtime(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")), transfer.workers,
                 transfer.amp, transfer.amp_dtype, transfer.channels_last)
    sources = sources_for(spec, transfer, store)
    targets = {t.name: t for t in spec.targets}
    combos = [(s, targets[t], m) for s in sources for t in transfer.targets for m in transfer.modes]
    task = f"transfer:{transfer.name}"
    results = []
    load = functools.cache(lambda target_name, size: load_target(targets[target_name], size, transfer.seed,
                                                                 transfer.augment.resize))
    for done, (source, target, mode) in enumerate(combos):
        if progress:
            progress(task, done, len(combos))
        if should_stop is not None and should_stop():
            raise FlatlandError(f"transfer {tid} cancelled")
        combo = f"{source.name}--{target.name}--{mode}"
        key = f"{prefix}/results/{combo}.json"
        if store.exists(key):
            results.append(store.get_json(key))
            continue
        started = time.time()
        data = load(target.name, source.input_size)
        seed = derive_seed(transfer.seed, "transfer", source.name, target.name, mode)
        trainer = _trainer(source, mode, data, transfer, rt)
        metric = "iou_macro" if data.segmentation else _metric(data.multilabel)
        search_key = f"{prefix}/search/{combo}.json"
        search = None
        if transfer.search:
            if store.exists(search_key):
                search = store.get_json(search_key)
            else:
                search = cross_validate(trainer.run, trainer.eval_train, data.train_labels, transfer, seed, data.multilabel,
                                        metric)
                store.put_json(search_key, search)
        lr = search["best"]["lr"] if search else transfer.optim.lr
        wd = search["best"]["weight_decay"] if search else transfer.optim.weight_decay
        fit_kw = {}
        ckpt_key = f"{prefix}/checkpoints/{combo}.pt"
        if not trainer.cached:  # a cached-feature probe takes seconds; a fine-tune may take days
            fit_kw["checkpoint"] = lambda state: save_checkpoint(store, ckpt_key, state)
            if store.exists(ckpt_key):
                fit_kw["resume"] = load_checkpoint(store, ckpt_key)
            if stop_after_epoch is not None:
                fit_kw["stop_after_epoch"] = stop_after_epoch
        test_m, train_m = trainer.run(np.arange(len(trainer.fit_set)), trainer.test, lr, wd, derive_seed(seed, "final"),
                                      **fit_kw)
        if stop_after_epoch is not None and not trainer.cached and transfer.epochs > stop_after_epoch + 1:
            raise FlatlandError(f"transfer {tid}: stopped after epoch {stop_after_epoch} of {combo} (resumable)")
        result = {"source": source.name, "source_run_id": source.run_id, "model": source.model,
                  "target": target.name, "target_kind": target.kind, "split": target.held_out, "mode": mode,
                  "input_size": source.input_size, "lr": lr, "weight_decay": wd, "epochs": transfer.epochs,
                  "train_samples": len(trainer.fit_set), "test_samples": len(trainer.test), "metric": metric,
                  "test_score": test_m[metric], "train_score": train_m[metric], "test_loss": test_m["loss"],
                  "search": search, "cached_features": trainer.cached, "seconds": time.time() - started}
        if data.segmentation:
            pictures = test_m.pop("_examples_png", b"")
            if pictures:
                result["examples"] = f"{prefix}/examples/{combo}.png"
                store.put_bytes(result["examples"], pictures)
            result.update({"test_iou_macro": test_m["iou_macro"], "test_segmentation": test_m,
                           "train_segmentation": train_m, "segmentation_model": segmentation_model_for(source.model)})
        elif data.multilabel:
            result.update({"test_map": test_m["map"], "test_ap": test_m["ap"], "train_map": train_m["map"]})
        else:
            result.update({"test_top1": test_m["top1"], "train_top1": train_m["top1"]})
        store.put_json(key, result)
        if store.exists(ckpt_key):
            store.delete(ckpt_key)
        results.append(result)
    if progress:
        progress(task, len(combos), len(combos))
    summary = {"transfer_id": tid, "spec": transfer.model_dump(mode="json"), "results": results}
    store.put_json(f"{prefix}/transfer.json", summary)
    store.put_json(f"{prefix}/done.json", {"transfer_id": tid, "results": len(results)})
    return summary
