"""Supervised pre-training on rendered shards: one run of a :class:`PretrainSpec`.

The loop is task-agnostic: the network, targets, loss and metrics come from the run's
objective (:mod:`services.train.objectives`; classification unless the run names another).

What a run writes under ``runs/<run_id>/`` (``run_id = spec.run_id(name)``):

- ``label_map.json`` — the mix (:mod:`services.train.mixes`);
- ``checkpoints/epoch-<k>.pt`` after each epoch (the newest two are kept; they carry
  optimizer, scheduler, scaler and RNG state), ``checkpoints/final.pt`` at the end;
- ``metrics.jsonl`` — one JSON record per epoch (train/val loss, top-1, top-5, lr,
  samples, corrupt samples skipped, images/s);
- ``filters.png`` (first-layer filters) and ``curves.png``; segmentation runs add ``examples.png``
  (validation images, label maps and predictions);
- ``done.json`` last: a run counts as finished only once it exists. It lists ``checkpoint_size`` and
  ``checkpoint_sha256`` of ``final.pt``; readers verify the checkpoint against them, and a re-run
  that finds ``final.pt`` damaged makes it again (from the last epoch checkpoint).

Resume. A run that finds epoch checkpoints continues after the newest. Every epoch
re-seeds torch from ``derive_seed(seed, "torch", epoch)`` and the data order from the
epoch seed, so on the CPU a resumed run ends with bit-identical weights to an
uninterrupted one.

Distributed. Launched by ``torchrun`` (env ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``) the run uses DistributedDataParallel (gloo on the
CPU, nccl on GPUs); each rank streams a disjoint share of the shards, and all ranks
stop an epoch together when the first one runs out of data, so no rank waits on a
collective the others never join. Only rank 0 writes to the store.

Metrics also go to Prometheus: gauges in the default registry (scraped from a
service's metrics port) and, when ``FLATLAND_PUSHGATEWAY`` is set, pushed after every
epoch with grouping key experiment/stage/index.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from services.common.errors import FlatlandError, IntegrityError, ObjectNotFoundError
from services.common.seeds import derive_seed
from services.common.spec.experiment import ExperimentSpec
from services.common.spec.train import OptimSpec, PretrainSpec
from services.common.store import Store
from services.train import metrics as prom
from services.train.data import EmptySplitError, Folds, ShardStream, dataset_shards, make_loader, to_model_input
from services.train.mixes import LabelMap, mix_for_run
from services.train.models import (
    checkpoint_dict, load_checkpoint, load_verified_checkpoint, read_done, save_checkpoint, unwrap,
)
from services.train.objectives import Objective, objective_for
from services.train.objectives.classification import topk_correct  # noqa: F401  (kept importable from here)
from services.train.plots import curves_png, filters_png, triplets_png
from services.train.pretrained import import_pretrained

Progress = Callable[[str, int, int], None]
_EPOCH_KEY = re.compile(r"/checkpoints/epoch-(\d+)\.pt$")
KEEP_EPOCH_CHECKPOINTS = 2
_log = logging.getLogger(__name__)


class DivergedError(FlatlandError):
    """The loss became NaN or infinite."""


class RunCancelled(FlatlandError):
    """The run was asked to stop; its last epoch checkpoint lets it resume later."""

    grpc_status = "CANCELLED"


def run_prefix(run_id: str) -> str:
    return f"runs/{run_id}"


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistContext:
    """Join the process group torchrun describes in the environment (if any).

    The backend is nccl when the process uses a GPU, gloo otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistContext(rank, world, local_rank, dev)


def lr_factor(epoch_progress: float, optim: OptimSpec, epochs: int) -> float:
    """Learning-rate multiplier at a (fractional) epoch: linear warm-up, then cosine or step."""
    if optim.warmup_epochs > 0 and epoch_progress < optim.warmup_epochs:
        return (epoch_progress + 1e-3) / optim.warmup_epochs
    if optim.schedule == "step":
        return optim.step_gamma ** int(epoch_progress // optim.step_size)
    if optim.schedule == "constant":
        return 1.0
    span = max(epochs - optim.warmup_epochs, 1e-9)
    t = min(max((epoch_progress - optim.warmup_epochs) / span, 0.0), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * t))


def _sum_across_ranks(values: list[float], ctx: DistContext) -> list[float]:
    if not ctx.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def _all_have_batch(has_batch: bool, ctx: DistContext) -> bool:
    if not ctx.distributed:
        return has_batch
    t = torch.tensor([1 if has_batch else 0], device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


@dataclass(frozen=True)
class SearchTrial:
    """One cross-validation trial of a run's hyper-parameter search: its settings, where it writes, its folds."""

    run: PretrainSpec
    prefix: str
    train_folds: Folds
    val_folds: Folds


class PretrainRun:
    """One pre-training run, resumable from the store.

    Parameters
    ----------
    spec : ExperimentSpec
    name : str
        Name of a ``spec.pretrain`` entry.
    store : Store
    ctx : DistContext, optional
        Default: :func:`init_distributed` from the environment.
    index : int
        Job completion index, used as the Pushgateway grouping key.
    trial : SearchTrial, optional
        Run one cross-validation trial of the run's hyper-parameter search instead of the run
        itself (see :meth:`search`).
    """

    def __init__(self, spec: ExperimentSpec, name: str, store: Store, *, ctx: DistContext | None = None, index: int = 0,
                 trial: SearchTrial | None = None, metrics_registry: "prom.CollectorRegistry | None" = None):
        matches = [p for p in spec.pretrain if p.name == name]
        if not matches:
            raise FlatlandError(f"no pretrain run named '{name}' (known: {[p.name for p in spec.pretrain]})")
        self.spec = spec
        self.run: PretrainSpec = matches[0] if trial is None else trial.run
        self.store = store
        self.ctx = ctx or init_distributed()
        self.index = index
        self.trial = trial
        self.metrics_registry = metrics_registry  # a server's prometheus registry: its metrics port shows this run
        self.run_id = spec.run_id(name)
        self.prefix = run_prefix(self.run_id) if trial is None else trial.prefix
        self.objective: Objective = objective_for(self.run)

    # -- store keys -------------------------------------------------------------------
    def key(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts))

    @property
    def done_key(self) -> str:
        return self.key("done.json")

    def is_done(self) -> bool:
        return self.store.exists(self.done_key)

    def _verified_done(self) -> dict | None:
        """``done.json`` when ``final.pt`` still matches the size and SHA-256 it lists (streamed), else ``None``."""
        final = self.key("checkpoints/final.pt")
        try:
            done = read_done(self.store, self.done_key)
            if "checkpoint_sha256" not in done:
                return done  # finished before checksums were recorded: nothing to check against
            size, digest = self.store.checksum(final)
            if (size, digest) == (done["checkpoint_size"], done["checkpoint_sha256"]):
                return done
            problem = (f"{final}: {size} bytes, sha256 {digest[:12]}…; {self.done_key} lists "
                       f"{done['checkpoint_size']} bytes, {done['checkpoint_sha256'][:12]}…")
        except (IntegrityError, ObjectNotFoundError) as exc:
            problem = str(exc)
        _log.warning("run %s: %s: damaged; making the final checkpoint again", self.run_id, problem)
        return None

    def latest_epoch_checkpoint(self) -> tuple[int, str] | None:
        found = []
        for key in self.store.list(self.key("checkpoints/")):
            match = _EPOCH_KEY.search(key)
            if match:
                found.append((int(match[1]), key))
        return max(found) if found else None

    # -- the run ----------------------------------------------------------------------
    def execute(
        self,
        *,
        progress: Progress | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_epoch: Callable[[dict], None] | None = None,
        on_batch: Callable[[int, list[str]], None] | None = None,
        stop_after_epoch: int | None = None,
    ) -> dict:
        """Train (or resume) to the end; return the ``done.json`` summary.

        ``stop_after_epoch`` ends the call after that epoch's checkpoint (as a crash
        would), leaving the run resumable; it exists for tests and for time-boxed jobs.
        ``on_batch(epoch, sample_keys)`` sees the keys of every batch this rank trains on.
        The trained model stays available as ``self.model``.
        """
        if self.is_done():
            finished = self._verified_done()
            if finished is not None:
                return finished
            # the final checkpoint is damaged: run again, which resumes after the newest epoch checkpoint (the
            # last epoch, kept) and writes final.pt and done.json anew; without epoch checkpoints it retrains
        if self.run.kind == "torchvision_pretrained":  # an ImageNet baseline: import its weights, train nothing
            if not self.ctx.is_main:
                return {"run_id": self.run_id, "finished": True}
            summary = import_pretrained(self.spec, self.run, self.run_id, self.store, self.prefix)
            if progress:
                progress(f"train:{self.run.name}", 1, 1)
            return summary
        search = None
        if self.trial is None and self.run.search is not None:
            search = self.search(progress=progress)
        run, ctx, store = self.run, self.ctx, self.store
        started = time.time()
        label_map = mix_for_run(self.spec, run, store)
        objective = self.objective
        source = self._initial_checkpoint()
        objective.start_from(source)
        self.num_classes = objective.output_classes(label_map.num_classes)  # segmentation: + background
        if ctx.is_main:
            store.put_json(self.key("label_map.json"), label_map.to_json())
        train_shards, val_shards, tables = self._shards(label_map)
        expected_train = self._expected_samples(train_shards, label_map)
        if self.trial is not None:  # all folds but one, of the searched fraction
            folds = self.trial.train_folds
            expected_train = int(expected_train * folds.fraction * (folds.folds - 1) / folds.folds)
        own = objective.sample_stream(epoch=0, rank=0, world_size=1)  # samples not from rendered datasets
        if own is not None:
            expected_train = len(own)
        steps_per_epoch = max(1, expected_train // (run.batch_size * ctx.world_size))

        torch.manual_seed(derive_seed(run.seed, "torch", "init"))
        model = objective.build_model(self.num_classes)
        if source is not None:  # resuming below replaces these weights with the epoch checkpoint's
            try:
                objective.load_initial(model, source)
            except RuntimeError as exc:
                raise FlatlandError(f"run {self.run_id}: init_from '{run.init_from}': its checkpoint does not load into "
                                    f"this run's network: {str(exc)[:500]}") from None
        model = model.to(ctx.device)
        self.model = model
        use_cuda = ctx.device.type == "cuda"
        channels_last = use_cuda and run.channels_last
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        trained = [p for p in model.parameters() if p.requires_grad]
        if run.optim.optimizer == "adam":
            optimizer = torch.optim.Adam(trained, lr=run.optim.lr, weight_decay=run.optim.weight_decay)
        else:
            optimizer = torch.optim.SGD(trained, lr=run.optim.lr, momentum=run.optim.momentum,
                                        weight_decay=run.optim.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step / steps_per_epoch, run.optim, run.epochs))
        amp_dtype = torch.bfloat16 if run.amp_dtype == "bfloat16" else torch.float16
        use_amp = use_cuda and run.amp
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

        records: list[dict] = []
        start_epoch = 0
        latest = self.latest_epoch_checkpoint()
        if latest is not None:
            state = load_checkpoint(store, latest[1])
            model.load_state_dict(state["state_dict"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["rng"]["torch"])
            records = list(state["metrics"])
            start_epoch = state["epoch"] + 1
        train_model: nn.Module = model
        if ctx.distributed:
            train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[ctx.device.index] if use_cuda else None)

        gauges = prom.RunGauges(self.spec.name, self.run_id, self.index, rank=ctx.rank if ctx.distributed else None,
                                 served=self.metrics_registry)
        task = f"train:{run.name}"
        if progress:
            progress(task, start_epoch, run.epochs)
        for epoch in range(start_epoch, run.epochs):
            epoch_start = time.time()
            torch.manual_seed(derive_seed(run.seed, "torch", epoch))
            stream = objective.sample_stream(epoch=epoch, rank=ctx.rank, world_size=ctx.world_size)
            if stream is None:  # the run's rendered datasets
                stream = ShardStream(store.url, train_shards, tables, input_size=run.input_size, augment=run.augment,
                                     shuffle_buffer=run.shuffle_buffer, seed=run.seed, epoch=epoch, rank=ctx.rank,
                                     world_size=ctx.world_size, max_corrupt_fraction=run.max_corrupt_fraction,
                                     folds=self.trial.train_folds if self.trial else None,
                                     with_seg=objective.reads_label_maps, members=objective.reads_members)
            loader = make_loader(stream, batch_size=run.batch_size, workers=run.workers, train=True, pin_memory=use_cuda)
            train_model.train()
            sums = np.zeros(3 + objective.sum_width)  # loss*n, n, corrupt, then the objective's metric sums
            batches = iter(loader)
            while True:
                if should_stop is not None and should_stop():
                    raise RunCancelled(f"run {self.run_id} cancelled during epoch {epoch}")
                batch = next(batches, None)
                if not _all_have_batch(batch is not None, ctx):
                    break
                if on_batch is not None:
                    on_batch(epoch, list(batch["key"]))
                x = to_model_input(batch["image"], ctx.device, channels_last=channels_last, mean=run.mean, std=run.std)
                y = objective.targets(batch, ctx.device)
                with torch.autocast(ctx.device.type, dtype=amp_dtype, enabled=use_amp):
                    output = objective.forward(train_model, x, y)
                    loss = objective.loss(output, y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if run.optim.grad_clip_norm is not None:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), run.optim.grad_clip_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise DivergedError(
                        f"run {self.run_id}: training loss became {loss_value} in epoch {epoch}; lower optim.lr, "
                        "raise optim.warmup_epochs or set optim.grad_clip_norm")
                n = x.shape[0]
                sums += [loss_value * n, n, int(batch["corrupt"].sum()), *objective.metric_sums(output, y)]
            del batches, loader
            if ctx.distributed:
                # DDP syncs buffers (BatchNorm statistics) from rank 0 at each forward; after the
                # last step ranks differ until the next one, so sync now: evaluation and the
                # checkpoint then see the same model on every rank.
                for buffer in model.buffers():
                    dist.broadcast(buffer, src=0)
            loss_sum, seen, corrupt, *metric_sums = _sum_across_ranks(sums.tolist(), ctx)
            if seen == 0:
                raise FlatlandError(
                    f"run {self.run_id}: epoch {epoch} saw no training batches (fewer samples than batch_size "
                    f"{run.batch_size} per loader worker?)")
            record = {"epoch": epoch, "train_loss": loss_sum / seen,
                      **{f"train_{m}": value for m, value in objective.summarize(metric_sums, seen).items()},
                      "train_samples": int(seen), "corrupt_samples": int(corrupt),
                      "lr": optimizer.param_groups[0]["lr"]}
            if val_shards:
                record.update(self.evaluate(model, val_shards, tables, channels_last, use_amp, amp_dtype, epoch=epoch))
            record["seconds"] = time.time() - epoch_start
            record["images_per_s"] = seen / record["seconds"]
            records.append(record)
            if ctx.is_main:
                self._save_epoch(model, optimizer, scheduler, scaler, epoch, records)
            gauges.observe(record)  # every rank, under its own rank label (the values are summed across ranks)
            if on_epoch:
                on_epoch(record)
            if progress:
                progress(task, epoch + 1, run.epochs)
            if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch + 1 < run.epochs:
                return {"run_id": self.run_id, "stopped_after_epoch": epoch, "finished": False}
        summary = {"run_id": self.run_id, "finished": True, "epochs": run.epochs, "model": run.model,
                   "task": run.task, "num_classes": self.num_classes, "final": records[-1] if records else {},
                   "checkpoint": self.key("checkpoints/final.pt"), "label_map": self.key("label_map.json"),
                   "seconds_this_session": time.time() - started}
        if search is not None:
            summary["search"] = search
        if ctx.is_main:
            self._finish(model, records, label_map, summary, (val_shards, tables))
        if ctx.distributed:
            dist.barrier()
        return summary

    def _initial_checkpoint(self) -> dict | None:
        """The verified final checkpoint of the run's ``init_from`` run, or None (from scratch)."""
        if self.run.init_from is None:
            return None
        source_id = self.spec.run_id(self.run.init_from)
        try:
            return load_verified_checkpoint(self.store, run_prefix(source_id))
        except ObjectNotFoundError:
            raise ObjectNotFoundError(
                f"run {self.run_id} starts from run '{self.run.init_from}', which has not finished: no "
                f"{run_prefix(source_id)}/done.json (train it first; runs train in the order listed)") from None

    def _shards(self, label_map: LabelMap):
        run = self.run
        train, val, tables = [], [], []
        for source, part in enumerate(label_map.parts):
            tables.append(part.label_table())
            train += dataset_shards(self.store, part.dataset_id, run.train_split, source=source)
            if self.trial is not None:  # validation: the held-out fold of the training split
                val = train
            elif run.val_split is not None:
                try:
                    val += dataset_shards(self.store, part.dataset_id, run.val_split, source=source)
                except EmptySplitError:
                    # e.g. rendered with val_fraction 0: train anyway, without validation metrics.
                    _log.warning("run %s: dataset %s has no '%s' split; no validation for it",
                                 self.run_id, part.dataset_id, run.val_split)
        return train, val, tables

    @staticmethod
    def _expected_samples(shards, label_map: LabelMap) -> int:
        """Training samples per epoch, assuming classes are balanced within each dataset."""
        total = 0.0
        for shard in shards:
            part = label_map.parts[shard.source]
            total += shard.samples * len(part.classes) / part.available
        return int(total)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, shards, tables, channels_last: bool, use_amp: bool, amp_dtype,
                 epoch: int = 0) -> dict:
        """Loss and the objective's metrics over the rank's share of ``shards``, summed across ranks
        (and the objective's confidence intervals, over the samples of every rank)."""
        run, ctx, objective = self.run, self.ctx, self.objective
        model = unwrap(model)
        model.eval()
        stream = ShardStream(self.store.url, shards, tables, input_size=run.input_size, augment=None,
                             seed=run.seed, rank=ctx.rank, world_size=ctx.world_size,
                             max_corrupt_fraction=run.max_corrupt_fraction,
                             folds=self.trial.val_folds if self.trial else None,
                             with_seg=objective.reads_label_maps, members=objective.reads_members)
        sums = np.zeros(2 + objective.sum_width)  # loss*n, n, then the objective's metric sums
        per_sample = []
        for batch in make_loader(stream, batch_size=run.batch_size, workers=run.workers, train=False):
            x = to_model_input(batch["image"], ctx.device, channels_last=channels_last, mean=run.mean, std=run.std)
            y = objective.targets(batch, ctx.device)
            with torch.autocast(ctx.device.type, dtype=amp_dtype, enabled=use_amp):
                output = objective.forward(model, x, y)
            output = output.float() if isinstance(output, torch.Tensor) else output
            sums += [float(objective.loss(output, y)) * x.shape[0], x.shape[0], *objective.metric_sums(output, y)]
            rows = objective.per_sample(output, y)
            if rows is not None:
                per_sample.append(rows)
        loss_sum, seen, *metric_sums = _sum_across_ranks(sums.tolist(), ctx)
        seen = max(seen, 1)
        result = {"val_loss": loss_sum / seen,
                  **{f"val_{m}": value for m, value in objective.summarize(metric_sums, seen).items()},
                  "val_samples": int(seen)}
        if per_sample:
            rows = np.concatenate(per_sample)
            if ctx.distributed:
                gathered = [None] * ctx.world_size
                dist.all_gather_object(gathered, rows)
                rows = np.concatenate(gathered)
            result.update({f"val_{m}_ci": ci for m, ci in objective.intervals(rows, epoch).items()})
        return result

    def search(self, progress: Progress | None = None) -> dict:
        """The cross-validated search of ``optim.lr`` and ``optim.weight_decay`` (``run.search``).

        Every (lr, weight decay) pair trains ``search.epochs`` epochs on all folds of the
        training split but one and is scored on the held-out fold, for each fold; each trial
        is a resumable run of its own under ``runs/<run_id>/search/``. The pair with the best
        mean held-out score (the objective's first metric, top-1 for classification) replaces
        the run's optimiser settings. Writes and returns ``runs/<run_id>/search.json``.
        """
        key = self.key("search.json")
        if self.store.exists(key):
            result = self.store.get_json(key)
        else:
            result = self._run_search(progress)
            if self.ctx.is_main:
                self.store.put_json(key, result)
        self.run = self.run.model_copy(update={"optim": self.run.optim.model_copy(update={
            "lr": result["best"]["lr"], "weight_decay": result["best"]["weight_decay"]})})
        return result

    def _run_search(self, progress: Progress | None) -> dict:
        run, search = self.run, self.run.search
        metric = f"val_{self.objective.metrics[0]}" if self.objective.metrics else "val_loss"
        sign = 1.0 if self.objective.metrics else -1.0  # higher is better, except for a loss
        pairs = list(itertools.product(search.lr, search.weight_decay))
        task, total, done = f"search:{run.name}", len(pairs) * search.folds, 0
        grid = []
        for lr, weight_decay in pairs:
            scores = []
            for fold in range(search.folds):
                trial_run = run.model_copy(update={
                    "search": None, "epochs": search.epochs,
                    "optim": run.optim.model_copy(update={"lr": lr, "weight_decay": weight_decay})})
                trial = SearchTrial(
                    run=trial_run, prefix=self.key(f"search/lr{lr:g}-wd{weight_decay:g}-fold{fold}"),
                    train_folds=Folds(search.folds, fold, held_out=False, seed=run.seed, fraction=search.fraction),
                    val_folds=Folds(search.folds, fold, held_out=True, seed=run.seed, fraction=search.fraction))
                summary = PretrainRun(self.spec, run.name, self.store, ctx=self.ctx, index=self.index,
                                      trial=trial).execute()
                scores.append(float(summary["final"][metric]))
                done += 1
                if progress:
                    progress(task, done, total)
            grid.append({"lr": lr, "weight_decay": weight_decay, f"fold_{metric}": scores,
                         f"mean_{metric}": float(np.mean(scores))})
        best = max(grid, key=lambda g: sign * g[f"mean_{metric}"])  # ties: the first listed
        return {"folds": search.folds, "epochs": search.epochs, "fraction": search.fraction, "metric": metric,
                "grid": grid, "best": {"lr": best["lr"], "weight_decay": best["weight_decay"]}}

    def _checkpoint(self, model, epoch: int, **extra) -> dict:
        run = self.run
        return checkpoint_dict(model, name=run.model, num_classes=extra.pop("num_classes"), input_size=run.input_size,
                               mean=run.mean, std=run.std, epoch=epoch,
                               spec=run.model_dump(mode="json") | {"run_id": self.run_id, "experiment": self.spec.name},
                               **self.objective.checkpoint_extras(), **extra)

    def _save_epoch(self, model, optimizer, scheduler, scaler, epoch: int, records: list[dict]) -> None:
        ckpt = self._checkpoint(model, epoch, num_classes=self.num_classes, optimizer=optimizer.state_dict(),
                                scheduler=scheduler.state_dict(), scaler=scaler.state_dict(),
                                rng={"torch": torch.get_rng_state()}, metrics=records)
        save_checkpoint(self.store, self.key(f"checkpoints/epoch-{epoch}.pt"), ckpt)
        self.store.put_bytes(self.key("metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in records).encode())
        for old in range(epoch - KEEP_EPOCH_CHECKPOINTS, -1, -1):
            key = self.key(f"checkpoints/epoch-{old}.pt")
            if not self.store.exists(key):
                break
            self.store.delete(key)

    @torch.no_grad()
    def _segmentation_examples(self, model: nn.Module, shards, tables, count: int = 4) -> bytes:
        """Image / label map / prediction of the first ``count`` validation samples (``examples.png``)."""
        run = self.run
        model = unwrap(model)
        model.eval()
        stream = ShardStream(self.store.url, shards, tables, input_size=run.input_size, augment=None, seed=run.seed,
                             with_seg=True)
        samples = list(itertools.islice(iter(stream), count))
        images = torch.stack([s["image"] for s in samples])
        device = next(model.parameters()).device
        output = model(to_model_input(images, device, mean=run.mean, std=run.std))
        logits = output["out"] if isinstance(output, dict) else output
        return triplets_png([s["image"].numpy() for s in samples], [s["seg"].numpy() for s in samples],
                            list(logits.argmax(1).cpu().numpy()), logits.shape[1],
                            f"{self.run_id}: validation images, label maps (class + 1), predictions")

    def _finish(self, model, records: list[dict], label_map: LabelMap, summary: dict, examples=None) -> None:
        # the objective says what is kept (the 3D prior: its backbone alone, a plain torchvision model)
        ckpt = self._checkpoint(self.objective.checkpoint_model(unwrap(model)), self.run.epochs - 1,
                                num_classes=self.num_classes, label_map=label_map.to_json())
        size, digest = save_checkpoint(self.store, self.key("checkpoints/final.pt"), ckpt)
        # consumers (transfer, neuro) verify final.pt against these before using it
        summary["checkpoint_size"], summary["checkpoint_sha256"] = size, digest
        self.store.put_bytes(self.key("metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in records).encode())
        self.store.put_bytes(self.key("filters.png"), filters_png(model, f"{self.run_id}: first-layer filters"))
        self.store.put_bytes(self.key("curves.png"), curves_png(records, self.run_id))
        if self.objective.reads_label_maps and examples and examples[0]:
            self.store.put_bytes(self.key("examples.png"), self._segmentation_examples(model, *examples))
        self.store.put_json(self.done_key, summary)


def pretrain(spec: ExperimentSpec, name: str, store: Store, **kwargs) -> dict:
    """Run (or resume, or find finished) the pre-training run ``name``; see :class:`PretrainRun`."""
    index = kwargs.pop("index", 0)
    ctx = kwargs.pop("ctx", None)
    return PretrainRun(spec, name, store, ctx=ctx, index=index).execute(**kwargs)
