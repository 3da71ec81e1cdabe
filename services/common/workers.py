"""Work split over local worker processes, as an Indexed Job would split it.

Worker ``i`` of ``n`` calls ``target(store, *args, index=i, count=n, progress=..., emit=...)``
(``target`` named as ``"module:function"``, imported in the worker); every item is made
from its own seed, so the outputs are byte-identical whatever ``n`` is. ``flatland run``
(:mod:`services.experiment.parallel`) and the stage servicers of ``flatland serve`` use it.

Processes are started with the ``spawn`` method: a forked child would inherit the parent's
OpenGL contexts, torch's thread pools and gRPC's threads (none survives a fork). Each worker
sends its progress (``progress(task, done, total)``) and its own events (``emit(payload)``,
e.g. one per shard written) through a multiprocessing queue; :meth:`WorkerPool.messages`
hands them to the parent as they come.

Stopping: workers ignore SIGINT (a terminal's Ctrl-C reaches the whole process group) and
turn SIGTERM into ``SystemExit``, so their ``finally`` blocks remove temporary files. The
parent stops them all (SIGTERM, then SIGKILL after :data:`STOP_GRACE_S`) when it leaves the
pool early: a worker failed, the parent was interrupted, or, inside a gRPC call, the caller
cancelled, its deadline passed or the server is stopping (:func:`~services.common.cancel.check_cancelled`
between messages). Items are written whole and counted only by their part records, so a
stopped pool leaves a store that the next call resumes.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
import pickle
import queue as queue_module
import signal
import time
import traceback
from collections.abc import Callable, Iterator

from services.common.cancel import check_cancelled
from services.common.errors import FlatlandError
from services.common.spec.local import available_cores

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]

#: Thread-pool sizes each worker gets (cores / workers), so n workers do not start n x cores threads. LP_NUM_THREADS
#: is Mesa llvmpipe's (OSMesa) rasterizer threads: left at its default (one per core) in each of 2 render workers on
#: 2 cores, 1,920 procsynth images took 18.0 s; with 1 per worker 16.6 s.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS",
               "LP_NUM_THREADS")
STOP_GRACE_S = 10.0
POLL_S = 0.2


class WorkerError(FlatlandError):
    """A worker process died or failed in a way that could not be passed back as its own exception."""


def _exit_on_sigterm(signum, _frame):
    raise SystemExit(128 + signum)


def _resolve(target: str) -> Callable:
    module, _, name = target.partition(":")
    if not module or not name:
        raise ValueError(f"worker target must be 'module:function', got {target!r}")
    return getattr(importlib.import_module(module), name)


def _worker(target: str, args: tuple, store_url: str, index: int, count: int, threads: int, messages) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    for var in THREAD_VARS:
        os.environ.setdefault(var, str(threads))
    try:
        from services.common.store import open_store

        store = open_store(store_url)

        def progress(task: str, done: int, total: int) -> None:
            messages.put(("progress", index, task, done, total))

        def emit(payload) -> None:
            messages.put(("event", index, payload))

        summary = _resolve(target)(store, *args, index=index, count=count, progress=progress, emit=emit)
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


def stage_job(store, stage: str, spec, *, index: int, count: int, progress: ProgressFn, emit) -> dict:
    """Worker target of a whole stage: its ``run_job`` share ``index`` of ``count`` (what an Indexed Job runs)."""
    from services.common.stages import get_stage

    return get_stage(stage).job().run_job(spec, store, index=index, count=count, progress=progress)


class WorkerPool:
    """``workers`` processes running ``target``; use as a context manager, read :meth:`messages` to the end.

    Leaving the ``with`` block before every worker is done (an exception, a cancelled call)
    stops them all; ``summaries`` holds each worker's return value, in index order, once all are done.
    """

    def __init__(self, target: str, args: tuple, store_url: str, workers: int, *, name: str = "flatland"):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.target, self.args, self.store_url, self.workers, self.name = target, args, store_url, workers, name
        self.summaries: list = []
        self._context = multiprocessing.get_context("spawn")
        self._queue = None
        self._processes: list = []
        self._finished = False

    def __enter__(self) -> WorkerPool:
        self._queue = self._context.Queue()
        threads = max(1, available_cores() // self.workers)
        self._processes = [
            self._context.Process(target=_worker, name=f"{self.name}-{i}",
                                  args=(self.target, self.args, self.store_url, i, self.workers, threads, self._queue))
            for i in range(self.workers)
        ]
        try:
            for process in self._processes:
                process.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def messages(self) -> Iterator[tuple]:
        """``("progress", worker, task, done, total)`` and ``("event", worker, payload)`` as the workers send them,
        until every worker is done. Raises the first worker's own exception, :class:`WorkerError` when one dies,
        and :class:`~services.common.cancel.Cancelled` inside a cancelled call (checked every :data:`POLL_S`)."""
        summaries: dict[int, object] = {}
        while len(summaries) < self.workers:
            check_cancelled(f"{self.name} workers")
            try:
                message = self._queue.get(timeout=POLL_S)
            except queue_module.Empty:
                for i, process in enumerate(self._processes):
                    if i not in summaries and process.exitcode not in (None, 0):
                        raise WorkerError(f"{self.name} worker {i} of {self.workers} died (exit code "
                                          f"{process.exitcode}) before it finished; run again to resume")
                continue
            kind, index = message[0], message[1]
            if kind == "done":
                summaries[index] = message[2]
            elif kind == "error":
                exc, text = pickle.loads(message[2]), message[3]
                log.error("%s worker %d of %d failed:\n%s", self.name, index, self.workers, text)
                raise exc
            else:
                yield message
        self.summaries = [summaries[i] for i in range(self.workers)]
        self._finished = True

    def run(self, progress: ProgressFn | None = None) -> list:
        """Read every message (progress of all workers added up per task); return the summaries."""
        shares: dict[str, dict[int, tuple[int, int]]] = {}
        for message in self.messages():
            if message[0] == "progress" and progress is not None:
                _, worker, task, done, total = message
                shares.setdefault(task, {})[worker] = (done, total)
                values = shares[task].values()
                progress(task, sum(d for d, _ in values), sum(t for _, t in values))
        return self.summaries

    def alive(self) -> list[int]:
        """Process ids of workers still running."""
        return [p.pid for p in self._processes if p.pid is not None and p.is_alive()]

    def close(self) -> None:
        """Let finished workers exit; SIGTERM the others; SIGKILL any still running after :data:`STOP_GRACE_S`."""
        started = [p for p in self._processes if p.pid is not None]
        for process in started:
            if self._finished:
                process.join(STOP_GRACE_S)
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        while any(p.is_alive() for p in started) and time.monotonic() < deadline:
            self._drain()  # a worker flushing its queue at exit must not block on a full pipe
            for process in started:
                process.join(0.05)
        for process in started:
            if process.is_alive():
                log.warning("worker %s did not stop within %.0f s; killing it", process.name, STOP_GRACE_S)
                process.kill()
                process.join()
        if self._queue is not None:
            self._drain()
            self._queue.close()
            self._queue = None

    def _drain(self) -> None:
        if self._queue is None:
            return
        try:
            while True:
                self._queue.get_nowait()
        except (queue_module.Empty, OSError, EOFError, ValueError):
            pass
