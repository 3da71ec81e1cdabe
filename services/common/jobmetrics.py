"""Prometheus metrics of a batch job (one Kubernetes Job pod), pushed to a Pushgateway.

Jobs are short-lived, so Prometheus cannot count on scraping them: :meth:`JobMetrics.publish`
pushes the job's registry to the Pushgateway named by ``FLATLAND_PUSHGATEWAY`` under the
grouping key ``{experiment, stage, index}`` (one group per Indexed-Job completion index, so
parallel pods never overwrite each other), plus ``rank`` in each process of a torchrun job. Without a Pushgateway, ``publish`` does nothing and
the caller may expose the same registry on its metrics port with :meth:`JobMetrics.serve`.

Metric names (the Grafana dashboard in ``k8s/base/monitoring`` reads these):

* ``flatland_job_items_done_total{stage}``  counter: work items finished by this pod
* ``flatland_job_items_total{stage}``       gauge: work items this pod has to do
* ``flatland_train_loss{stage}``, ``flatland_train_top1{stage}``  gauges set by training
* any other ``flatland_*`` gauge a stage sets with :meth:`JobMetrics.set`

Usage::

    metrics = JobMetrics("render", spec.name, index)
    summary = run_job(spec, store, index=index, count=count, progress=metrics.progress)
    metrics.finish(store)   # final push, linger for a scrape, summary to the store, group deleted
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from urllib.error import URLError

from prometheus_client import CollectorRegistry, Counter, Gauge, delete_from_gateway, push_to_gateway, start_http_server

log = logging.getLogger("flatland.jobmetrics")

PUSHGATEWAY_ENV = "FLATLAND_PUSHGATEWAY"
PUSH_JOB_NAME = "flatland"
#: The train stage's per-epoch gauges (services/train/metrics.py) push under this job name, same grouping key.
TRAIN_PUSH_JOB_NAME = "flatland-train"
#: How long :meth:`JobMetrics.finish` keeps the final values in the Pushgateway before deleting the
#: group: long enough for Prometheus to scrape them (two 15 s scrape intervals by default).
LINGER_ENV = "FLATLAND_METRICS_LINGER_SECONDS"
DEFAULT_LINGER_SECONDS = 30.0
#: Where the final summary of a finished job pod goes in the store.
SUMMARY_PREFIX = "jobmetrics"
GAUGE_NAME_PATTERN = re.compile(r"^flatland_[a-z][a-z0-9_]*$")
# Short names accepted by set() for the gauges every dashboard knows.
GAUGE_ALIASES = {"loss": "flatland_train_loss", "top1": "flatland_train_top1", "items_total": "flatland_job_items_total"}


class JobMetrics:
    """Counters and gauges of one job pod in a private registry, pushed as one Pushgateway group.

    Parameters
    ----------
    stage : str
        "meshgen", "render", "train" or "neuro" (becomes the ``stage`` label).
    experiment : str
        Experiment name (grouping key).
    index : int
        Completion index of the pod in its (Indexed) Job; 0 for single-pod Jobs.
    pushgateway : str, optional
        Pushgateway URL; default: env ``FLATLAND_PUSHGATEWAY`` (unset or empty: no pushing).
    min_push_interval : float
        :meth:`progress` pushes at most this often (seconds); the final item always pushes.
    rank : int, optional
        Rank of this process in a distributed (torchrun) job; default: env ``RANK`` when set.
        Becomes part of the grouping key, so every rank pushes its own group (``rank`` label).
    """

    def __init__(self, stage: str, experiment: str, index: int = 0, *, pushgateway: str | None = None,
                 min_push_interval: float = 5.0, rank: int | None = None):
        if not stage or not re.fullmatch(r"[a-z][a-z0-9-]*", stage):
            raise ValueError(f"stage must be a lower-case name like 'render', got {stage!r}")
        if not experiment:
            raise ValueError("experiment must be a non-empty name")
        if not isinstance(index, int) or index < 0:
            raise ValueError(f"index must be a non-negative int, got {index!r}")
        if rank is None and os.environ.get("RANK", "").isdigit():
            rank = int(os.environ["RANK"])
        if rank is not None and (not isinstance(rank, int) or rank < 0):
            raise ValueError(f"rank must be a non-negative int, got {rank!r}")
        self.stage = stage
        self.experiment = experiment
        self.index = index
        self.rank = rank
        self.pushgateway = pushgateway if pushgateway is not None else os.environ.get(PUSHGATEWAY_ENV, "")
        self.min_push_interval = min_push_interval
        self.registry = CollectorRegistry()
        self._lock = threading.Lock()
        self._last_push = float("-inf")
        self._task_done: dict[str, int] = {}
        self._task_total: dict[str, int] = {}
        self._items_done = Counter(
            "flatland_job_items_done", "Work items (classes, shards, runs, scores) finished by this job pod.",
            ["stage"], registry=self.registry,
        )
        self._gauges: dict[str, Gauge] = {}
        self._http_server = None
        for name, help_text in (
            ("flatland_job_items_total", "Work items this job pod has to do."),
            ("flatland_train_loss", "Latest training loss (train stage)."),
            ("flatland_train_top1", "Latest top-1 accuracy, 0..1 (train stage)."),
        ):
            self._gauge(name, help_text)
        # Make the series exist at 0 so "remaining" queries work before the first item finishes.
        self._items_done.labels(stage)

    @property
    def grouping_key(self) -> dict[str, str]:
        key = {"experiment": self.experiment, "stage": self.stage, "index": str(self.index)}
        if self.rank is not None:
            key["rank"] = str(self.rank)
        return key

    def _gauge(self, name: str, help_text: str | None = None) -> Gauge:
        with self._lock:
            gauge = self._gauges.get(name)
            if gauge is None:
                gauge = Gauge(name, help_text or f"{name} (set by the {self.stage} job).", ["stage"], registry=self.registry)
                self._gauges[name] = gauge
            return gauge

    def items_total(self, n: int) -> None:
        """Declare how many work items this pod has (absolute, may be called again)."""
        if n < 0:
            raise ValueError(f"items_total must be >= 0, got {n}")
        self._gauge("flatland_job_items_total").labels(self.stage).set(n)

    def item_done(self, n: int = 1) -> None:
        """Count ``n`` more finished work items."""
        if n < 0:
            raise ValueError(f"item_done counts up; got {n}")
        self._items_done.labels(self.stage).inc(n)

    def set(self, name: str, value: float) -> None:
        """Set a gauge: ``"loss"``, ``"top1"``, ``"items_total"`` or any ``flatland_*`` name (created on first use)."""
        full = GAUGE_ALIASES.get(name, name)
        if not GAUGE_NAME_PATTERN.fullmatch(full):
            raise ValueError(
                f"metric name {name!r} is not allowed: use 'loss', 'top1', 'items_total' or a "
                "name matching flatland_[a-z][a-z0-9_]*"
            )
        if full == "flatland_job_items_done_total":
            raise ValueError("flatland_job_items_done_total is a counter; use item_done()")
        self._gauge(full).labels(self.stage).set(float(value))

    def items_done(self) -> float:
        """Items counted so far (read back from the registry)."""
        return self.registry.get_sample_value("flatland_job_items_done_total", {"stage": self.stage}) or 0.0

    def progress(self, task: str, done: int, total: int) -> None:
        """A ``run_job`` progress callback: absolute ``done`` of ``total`` for ``task``.

        Each task keeps its own count, so a job reporting several tasks (one per dataset, say)
        adds up: the counter grows by the increase of ``done``, and the total gauge is the sum
        of every task's ``total``. Pushes when ``min_push_interval`` has passed since the last
        push, and whenever a task completes.
        """
        if done < 0 or total < 0:
            raise ValueError(f"progress needs done >= 0 and total >= 0, got done={done}, total={total}")
        with self._lock:
            delta = max(0, done - self._task_done.get(task, 0))
            self._task_done[task] = max(self._task_done.get(task, 0), done)
            self._task_total[task] = total
            grand_total = sum(self._task_total.values())
            due = done >= total or time.monotonic() - self._last_push >= self.min_push_interval
        self.items_total(grand_total)
        if delta:
            self.item_done(delta)
        if due:
            self.publish()

    def publish(self) -> bool:
        """Push the whole registry as this pod's group; no-op without a Pushgateway.

        Returns True when pushed. A Pushgateway that cannot be reached is logged, not raised:
        monitoring must not fail the batch work it watches.
        """
        if not self.pushgateway:
            return False
        with self._lock:
            self._last_push = time.monotonic()
        try:
            push_to_gateway(self.pushgateway, job=PUSH_JOB_NAME, registry=self.registry,
                            grouping_key=self.grouping_key, timeout=10)
        except (URLError, OSError) as exc:
            log.warning("could not push metrics to %s: %s", self.pushgateway, exc)
            return False
        return True

    def summary_key(self) -> str:
        """Store key of this pod's final summary: ``jobmetrics/<stage>-<index>[-rank<r>].json``."""
        rank = f"-rank{self.rank}" if self.rank is not None else ""
        return f"{SUMMARY_PREFIX}/{self.stage}-{self.index}{rank}.json"

    def summary(self) -> dict:
        """The final values of this pod's registry: ``{"metrics": {"name{label=value,...}": value}}`` and the key."""
        values = {}
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                values[f"{sample.name}{{{labels}}}"] = sample.value
        return {"experiment": self.experiment, "stage": self.stage, "index": self.index, "rank": self.rank,
                "grouping_key": self.grouping_key, "finished_at": time.time(), "metrics": values}

    def finish(self, store=None, *, linger: float | None = None, sleep=time.sleep) -> bool:
        """The pod's work is done: push the final values, let Prometheus scrape them, keep a summary, delete the groups.

        Pushes once more, waits ``linger`` seconds (default env ``FLATLAND_METRICS_LINGER_SECONDS``,
        else 30: two scrape intervals), writes :meth:`summary` to ``store`` under
        :meth:`summary_key`, then deletes this pod's groups (its own and, for train, the
        per-epoch gauges' under ``flatland-train``) from the Pushgateway, so finished pods leave
        nothing behind there. Prometheus keeps the series it scraped. No-op without a Pushgateway.
        Returns True when the groups were deleted. Call it only when the pod succeeded: a failed
        pod's group stays for inspection until its retry overwrites it.
        """
        if not self.pushgateway:
            return False
        if linger is None:
            try:
                linger = float(os.environ.get(LINGER_ENV, DEFAULT_LINGER_SECONDS))
            except ValueError:
                raise ValueError(f"{LINGER_ENV} must be a number of seconds, got {os.environ.get(LINGER_ENV)!r}") from None
        if linger < 0:
            raise ValueError(f"linger must be >= 0 seconds, got {linger}")
        self.publish()
        if linger:
            sleep(linger)
        if store is not None:
            store.put_json(self.summary_key(), self.summary())
        jobs = (PUSH_JOB_NAME, TRAIN_PUSH_JOB_NAME) if self.stage == "train" else (PUSH_JOB_NAME,)
        try:
            for job in jobs:
                delete_from_gateway(self.pushgateway, job=job, grouping_key=self.grouping_key, timeout=10)
        except (URLError, OSError) as exc:
            log.warning("could not delete metrics group from %s: %s", self.pushgateway, exc)
            return False
        return True

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Expose the registry over HTTP (``/metrics``) instead of pushing; returns the bound port."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._http_server = server
        return server.server_port

    def stop_serving(self) -> None:
        server = self._http_server
        if server is not None:
            server.shutdown()
            server.server_close()
            self._http_server = None
