"""Batch entry point of the render stage (``flatland job render``; Kubernetes Indexed Job completion ``index``)."""

from __future__ import annotations

import time
from collections.abc import Callable

from services.common.spec.experiment import ExperimentSpec
from services.common.store import Store
from services.render.plan import shards_for_index
from services.render.scratch import clean_stale_scratch


def run_job(spec: ExperimentSpec, store: Store, *, index: int = 0, count: int = 1,
            progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Render this completion's share of every dataset's shards, resuming finished ones.

    Shard ``j`` of :func:`services.render.plan.all_shards` belongs to completion ``j % count``.
    Completion 0 also writes each dataset's contact sheet (if missing).

    Returns
    -------
    dict
        ``{"index", "count", "shards", "written", "skipped", "samples", "failures", "contact_sheets", "seconds"}``.
    """
    from services.render.contact import write_contact_sheet
    from services.render.keys import contact_sheet_key
    from services.render.output import render_shards

    started = time.monotonic()
    clean_stale_scratch()  # tars a killed worker left in the temporary directory
    tasks = shards_for_index(spec, index, count)
    summary = render_shards(spec, store, tasks, progress)
    sheets = []
    if index == 0:
        for dataset in spec.datasets:
            key = contact_sheet_key(spec.dataset_id(dataset.name))
            if not store.exists(key):
                write_contact_sheet(spec, store, dataset.name)
            sheets.append(key)
    return {"index": index, "count": count, "shards": len(tasks), "written": len(summary["written"]),
            "skipped": len(summary["skipped"]), "samples": summary["samples"], "failures": summary["failures"],
            "contact_sheets": sheets, "seconds": round(time.monotonic() - started, 3)}


def render_dataset_share(store: Store, spec: ExperimentSpec, dataset_name: str, *, index: int, count: int,
                         progress=None, emit=None) -> dict:
    """Worker target of ``flatland serve``'s ``RenderDataset`` (:class:`services.common.workers.WorkerPool`):
    shards ``index, index + count, …`` of one dataset's shard plan, one ``emit`` per shard written or found done.

    The caller cleans stale scratch before starting workers and consolidates the manifest after them."""
    from services.render.output import render_shards
    from services.render.plan import shard_plan

    dataset_id = spec.dataset_id(dataset_name)
    written = skipped = 0
    for task in shard_plan(spec, dataset_name)[index::count]:
        summary = render_shards(spec, store, [task])
        skipped += len(summary["skipped"])
        written += len(summary["written"])
        if emit is not None:
            emit({"split": task.split, "shard": task.shard, "key": task.key(dataset_id),
                  "skipped": bool(summary["skipped"]), "failures": list(summary["failures"])})
    return {"written": written, "skipped": skipped}
