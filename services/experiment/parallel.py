"""One stage's batch work across local worker processes, as an Indexed Job would split it.

Worker ``i`` of ``n`` runs ``run_job(spec, store, index=i, count=n)`` of the stage (the
split of :mod:`services.experiment.workplan`), so the outputs are byte-identical whatever
``n`` is: every item is made from its own seed, and the manifests are merged from the
items' part records at the end. The processes are :class:`services.common.workers.WorkerPool`'s
(spawned; one progress bar per task adds the shares up), shared with ``flatland serve``.

Stopping: workers ignore SIGINT (a terminal's Ctrl-C reaches the whole process group);
the parent, on Ctrl-C or SIGTERM, sends each worker SIGTERM, which a worker turns into
``SystemExit`` so its ``finally`` blocks remove temporary files. Shards and classes are
written whole and counted only by their part records, so a stopped run leaves a store
that the next run resumes.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

from services.common.spec import ExperimentSpec
from services.common.workers import STOP_GRACE_S, WorkerError, WorkerPool  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]


def merge_summaries(summaries: list[dict]) -> dict:
    """One summary of the workers' shares: numbers added, lists joined, dicts merged; ``seconds`` is the longest share."""

    def merge(values: list):
        first = values[0]
        if all(isinstance(v, dict) for v in values):
            keys = list(dict.fromkeys(k for v in values for k in v))
            return {k: (merge([v[k] for v in values if k in v]) if k != "seconds" else max(v.get(k, 0) for v in values))
                    for k in keys}
        if all(isinstance(v, list) for v in values):
            return [x for v in values for x in v]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return sum(values)
        return first

    merged = merge(summaries)
    for key in ("index", "shard"):
        merged.pop(key, None)
    merged["count"] = len(summaries)
    merged["workers"] = len(summaries)
    return merged


def run_stage_parallel(stage: str, spec: ExperimentSpec, store_url: str, workers: int,
                       progress: ProgressFn | None = None) -> dict:
    """Run ``stage`` as ``workers`` processes (``index`` 0..workers-1 of ``count`` = workers); merge their summaries.

    Raises the first worker's exception (the others are stopped); on ``KeyboardInterrupt``
    (or SIGTERM, turned into one here) every worker is stopped before it propagates.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    previous = None
    if threading.current_thread() is threading.main_thread():
        def on_sigterm(signum, _frame):
            raise KeyboardInterrupt(f"signal {signum}")

        previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with WorkerPool("services.common.workers:stage_job", (stage, spec), store_url, workers,
                        name=f"flatland-{stage}") as pool:
            summaries = pool.run(progress)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return merge_summaries(summaries)
