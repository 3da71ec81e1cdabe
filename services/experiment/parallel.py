"""One stage's batch work across local worker processes, as an Indexed Job would split it.

Worker ``i`` of ``n`` runs ``run_job(spec, store, index=i, count=n)`` of the stage (the
split of :mod:`services.experiment.workplan`), so the outputs are byte-identical whatever
``n`` is: every item is made from its own seed, and the manifests are merged from the
items' part records at the end.

Processes are started with the ``spawn`` method: a forked child would inherit the parent's
OpenGL contexts and torch's thread pools (neither survives a fork). Each worker sends its
progress through a multiprocessing queue; the parent adds the shares up into one bar per
task.

Stopping: workers ignore SIGINT (a terminal's Ctrl-C reaches the whole process group);
the parent, on Ctrl-C or SIGTERM, sends each worker SIGTERM, which a worker turns into
``SystemExit`` so its ``finally`` blocks remove temporary files. Shards and classes are
written whole and counted only by their part records, so a stopped run leaves a store
that the next run resumes.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import queue as queue_module
import signal
import threading
import traceback
from collections.abc import Callable

from services.common.errors import FlatlandError
from services.common.spec import ExperimentSpec
from services.common.stages import get_stage

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]

#: Thread-pool sizes each worker gets (cores / workers), so n workers do not start n x cores threads.
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
STOP_GRACE_S = 10.0


class WorkerError(FlatlandError):
    """A worker process died or failed in a way that could not be passed back as its own exception."""


def _exit_on_sigterm(signum, _frame):
    raise SystemExit(128 + signum)


def _worker(stage: str, spec: ExperimentSpec, store_url: str, index: int, count: int, threads: int, messages) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    for var in _THREAD_VARS:
        os.environ.setdefault(var, str(threads))
    try:
        from services.common.store import open_store

        store = open_store(store_url)
        job = get_stage(stage).job()

        def progress(task: str, done: int, total: int) -> None:
            messages.put(("progress", index, task, done, total))

        summary = job.run_job(spec, store, index=index, count=count, progress=progress)
        messages.put(("done", index, summary))
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
        text = traceback.format_exc()
        try:
            payload = pickle.dumps(exc)
            pickle.loads(payload)
        except Exception:  # noqa: BLE001 - an exception that does not survive pickling
            payload = pickle.dumps(WorkerError(f"{type(exc).__name__}: {exc}"))
        messages.put(("error", index, payload, text))


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


class _Totals:
    """Progress of every worker's share of each task, added up."""

    def __init__(self, progress: ProgressFn | None):
        self.progress = progress
        self.shares: dict[str, dict[int, tuple[int, int]]] = {}

    def update(self, worker: int, task: str, done: int, total: int) -> None:
        self.shares.setdefault(task, {})[worker] = (done, total)
        if self.progress is not None:
            values = self.shares[task].values()
            self.progress(task, sum(d for d, _ in values), sum(t for _, t in values))


def run_stage_parallel(stage: str, spec: ExperimentSpec, store_url: str, workers: int,
                       progress: ProgressFn | None = None) -> dict:
    """Run ``stage`` as ``workers`` processes (``index`` 0..workers-1 of ``count`` = workers); merge their summaries.

    Raises the first worker's exception (the others are stopped); on ``KeyboardInterrupt``
    (or SIGTERM, turned into one here) every worker is stopped before it propagates.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    threads = max(1, (os.cpu_count() or 1) // workers)
    processes = [
        context.Process(target=_worker, args=(stage, spec, store_url, i, workers, threads, messages),
                        name=f"flatland-{stage}-{i}")
        for i in range(workers)
    ]
    totals = _Totals(progress)
    summaries: dict[int, dict] = {}
    previous = None
    if threading.current_thread() is threading.main_thread():
        def on_sigterm(signum, _frame):
            raise KeyboardInterrupt(f"signal {signum}")

        previous = signal.signal(signal.SIGTERM, on_sigterm)
    finished = False
    try:
        for process in processes:
            process.start()
        while len(summaries) < workers:
            try:
                message = messages.get(timeout=0.5)
            except queue_module.Empty:
                for i, process in enumerate(processes):
                    if i not in summaries and process.exitcode not in (None, 0):
                        raise WorkerError(f"{stage} worker {i} of {workers} died (exit code {process.exitcode}) "
                                          "before it finished; run again to resume")
                continue
            kind, index = message[0], message[1]
            if kind == "progress":
                totals.update(index, *message[2:])
            elif kind == "done":
                summaries[index] = message[2]
            else:
                exc, text = pickle.loads(message[2]), message[3]
                log.error("%s worker %d of %d failed:\n%s", stage, index, workers, text)
                raise exc
        finished = True
    finally:
        _stop(processes, wait=finished)
        messages.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return merge_summaries([summaries[i] for i in range(workers)])


def _stop(processes: list, wait: bool) -> None:
    """Stop the workers: let them exit (``wait``) or SIGTERM them, then SIGKILL any still running after a grace period."""
    for process in processes:
        if process.pid is not None and wait:
            process.join(STOP_GRACE_S)
        if process.is_alive():
            process.terminate()
    for process in processes:
        if process.pid is None:  # never started
            continue
        process.join(STOP_GRACE_S)
        if process.is_alive():
            log.warning("worker %s did not stop within %.0f s; killing it", process.name, STOP_GRACE_S)
            process.kill()
            process.join()
