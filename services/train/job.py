"""Batch entry point of the train stage: pre-training runs, then transfers, then evaluations.

Work split. Pre-training run ``i`` (in spec order) belongs to job index ``i % count``;
transfer ``j`` to index ``j % count``. Under ``torchrun`` (``WORLD_SIZE`` > 1) the
ranks of one process group train every run together instead (DDP), and rank 0 alone
runs the transfers.

Inputs. Nothing waits here: a pre-training run whose dataset is not rendered yet
raises :class:`ObjectNotFoundError` naming the missing manifest, and a transfer whose
pre-training run has not finished names the missing ``done.json`` (a Kubernetes Job
retries; ``flatland run`` orders the stages).

Evaluations (``spec.evaluation``: shape bias, depth probes; :mod:`services.train.evaluate`) run with
the transfers (part ``all`` or ``transfer``), entry ``k`` on index ``k % count``.

Resume. Runs with ``done.json`` are skipped; unfinished runs continue from their
newest epoch checkpoint; transfers skip combinations already in the store, evaluations
(run, entry) pairs whose result is there.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from services.common.spec.experiment import ExperimentSpec
from services.common.store import Store
from services.train.loop import PretrainRun, init_distributed
from services.train.transfer import run_transfer, transfer_id


def run_job(
    spec: ExperimentSpec, store: Store, *, index: int = 0, count: int = 1,
    progress: Callable[[str, int, int], None] | None = None, part: str = "all",
) -> dict:
    """Pre-train this worker's runs, then run its transfers and evaluations.

    ``part`` narrows the work: ``"pretrain"`` (run ``i`` goes to index ``i % count``; an Argo
    step per run), ``"transfer"`` (every run must be done already), or ``"all"``.

    Returns
    -------
    dict
        ``{"stage": "train", "index", "count", "pretrain": {name: {"run_id", "status", "val_top1"}},
        "transfer": {name: {"transfer_id", "status", "results"}}}``; status is "done"
        (finished now) or "skipped" (already finished).
    """
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"index/count: need 0 <= index < count, got index={index}, count={count}")
    if part not in ("all", "pretrain", "transfer"):
        raise ValueError(f"part must be all, pretrain or transfer, got {part!r}")
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    ctx = init_distributed() if distributed or (spec.pretrain and part != "transfer") else None
    mine = (lambda i: True) if distributed else (lambda i: i % count == index)
    summary: dict = {"stage": "train", "index": index, "count": count, "pretrain": {}, "transfer": {}}
    for i, run_spec in enumerate(spec.pretrain):
        if part == "transfer" or not mine(i):
            continue
        run = PretrainRun(spec, run_spec.name, store, ctx=ctx, index=index)
        status = "skipped" if run.is_done() else "done"
        result = run.execute(progress=progress)
        summary["pretrain"][run_spec.name] = {"run_id": run.run_id, "status": status,
                                              "val_top1": result.get("final", {}).get("val_top1")}
    if (ctx is not None and ctx.rank != 0) or part == "pretrain":
        return summary
    for j, transfer in enumerate(spec.transfer):
        if not (j % count == index or distributed):
            continue
        tid = transfer_id(spec, transfer)
        status = "skipped" if store.exists(f"runs/{tid}/done.json") else "done"
        result = run_transfer(spec, transfer.name, store, progress=progress)
        summary["transfer"][transfer.name] = {
            "transfer_id": tid, "status": status,
            "results": [{k: r.get(k) for k in ("source", "target", "mode", "metric", "test_score", "test_top1")}
                        for r in result["results"]],
        }
    if spec.evaluation.shape_bias or spec.evaluation.depth_probe:  # after transfer: every run is done by now
        from services.train.evaluate import run_evaluations

        summary["evaluation"] = run_evaluations(
            spec, store, progress=progress, mine=(lambda i: True) if distributed else (lambda i: i % count == index))
    rec = spec.evaluation.recoverability
    if rec is not None and index == 0 and (ctx is None or ctx.rank == 0):
        summary["recoverability"] = run_recoverability(spec, store, progress=progress)
    return summary


def run_spec_evaluations(spec: ExperimentSpec, store: Store, *,
                         progress: Callable[[str, int, int], None] | None = None) -> dict:
    """All of ``spec.evaluation`` in this process (the train service's evaluation run): shape bias and depth probes,
    then shape recoverability; each part already in the store is skipped."""
    from services.train.evaluate import run_evaluations

    summary: dict = {}
    if spec.evaluation.shape_bias or spec.evaluation.depth_probe:
        summary["evaluation"] = run_evaluations(spec, store, progress=progress)
    if spec.evaluation.recoverability is not None:
        summary["recoverability"] = run_recoverability(spec, store, progress=progress)
    return summary


def run_recoverability(spec: ExperimentSpec, store: Store, *, progress: Callable[[str, int, int], None] | None = None) -> dict:
    """``spec.evaluation.recoverability``: fit each listed dataset's first classes (meshgen's ``fit_dataset``).

    A dataset whose ``recoverability.json`` already holds the same parameters, classes and instance is skipped.
    """
    from services.common.stages import get_stage
    from services.meshgen.api import recoverability_key

    fit_dataset = get_stage("meshgen").job().fit_dataset  # the stage's job, as the CLI reaches it

    rec = spec.evaluation.recoverability
    done: dict = {}
    params = rec.params.model_dump(mode="json")
    for name in rec.datasets:
        key = recoverability_key(spec.dataset_id(name))
        old = store.get_json(key) if store.exists(key) else None
        if old is not None and old.get("params") == params and old.get("classes_requested") == rec.classes \
                and old.get("instance") == rec.instance:
            done[name] = {"status": "skipped", "key": key}
            continue
        result = fit_dataset(spec, store, name, rec.params, classes=rec.classes, instance=rec.instance,
                             progress=progress)
        done[name] = {"status": "done", "key": key, "mean_held_out_iou": result.get("mean_held_out_iou"),
                      "mean_chamfer": result.get("mean_chamfer"), "mean_fscore": result.get("mean_fscore")}
    return done
