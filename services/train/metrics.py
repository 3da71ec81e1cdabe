"""Prometheus metrics of training runs.

Two destinations for the same numbers:

- the registry a ``flatland serve train`` server exposes on its metrics port (passed down
  from :func:`services.common.server.start_server` through the servicer), labelled by run;
- when the environment variable ``FLATLAND_PUSHGATEWAY`` (``host:port`` or URL) is
  set, a per-run registry pushed after every epoch, grouping key
  ``{experiment, stage="train", index}`` (plus ``rank`` in a distributed run) — how a
  Kubernetes Job reports.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref

from prometheus_client import CollectorRegistry, Counter, Gauge, push_to_gateway

from services.common.jobmetrics import PUSHGATEWAY_ENV, TRAIN_PUSH_JOB_NAME  # noqa: F401 (PUSHGATEWAY_ENV re-exported)

_log = logging.getLogger(__name__)

_VALUES = {  # record field -> (metric name, help, split label)
    "train_loss": ("flatland_train_loss", "Mean cross-entropy loss of the last epoch.", "train"),
    "val_loss": ("flatland_train_loss", "Mean cross-entropy loss of the last epoch.", "val"),
    "train_top1": ("flatland_train_top1", "Top-1 accuracy of the last epoch (0-1).", "train"),
    "val_top1": ("flatland_train_top1", "Top-1 accuracy of the last epoch (0-1).", "val"),
    "train_top5": ("flatland_train_top5", "Top-5 accuracy of the last epoch (0-1).", "train"),
    "val_top5": ("flatland_train_top5", "Top-5 accuracy of the last epoch (0-1).", "val"),
}
# segmentation runs (task: segmentation): pixel accuracy, IoU and F1 of the last epoch, micro and macro
for _metric, _help in (("pixel_accuracy", "Pixel accuracy"), ("iou_macro", "Mean IoU over classes"),
                       ("iou_micro", "IoU of the pooled pixel counts"), ("f1_macro", "Mean F1 over classes"),
                       ("f1_micro", "F1 of the pooled pixel counts")):
    for _split in ("train", "val"):
        _VALUES[f"{_split}_{_metric}"] = (f"flatland_train_{_metric}", f"{_help} of the last epoch (0-1).", _split)
# 3D-prior runs (task: 3d_prior): the loss terms of the last epoch and the depth error in metres
for _metric, _help in (("rgb_mse", "Mean squared error of the rendered image (0-1 values)"),
                       ("depth_mse", "Mean squared depth error (prior.depth_units, squared)"),
                       ("depth_mae_m", "Mean absolute depth error in metres"),
                       ("distill", "Mean squared distance of the backbone's tokens to its frozen initial copy's"),
                       ("density_l1", "Mean absolute density of the queried points")):
    for _split in ("train", "val"):
        _VALUES[f"{_split}_{_metric}"] = (f"flatland_train_{_metric}", f"{_help}, last epoch.", _split)


def _metrics(registry: CollectorRegistry, labels: tuple[str, ...]) -> dict[str, object]:
    gauges: dict[str, object] = {}
    for name, help_text, _split in _VALUES.values():
        if name not in gauges:
            gauges[name] = Gauge(name, help_text, [*labels, "split"], registry=registry)
    gauges["epoch"] = Gauge("flatland_train_epoch", "Epochs completed.", list(labels), registry=registry)
    gauges["lr"] = Gauge("flatland_train_learning_rate", "Learning rate at the end of the last epoch.", list(labels), registry=registry)
    gauges["images_per_s"] = Gauge("flatland_train_images_per_second", "Training throughput of the last epoch.", list(labels), registry=registry)
    gauges["samples"] = Counter("flatland_train_samples", "Training samples processed.", list(labels), registry=registry)
    gauges["corrupt"] = Counter("flatland_train_corrupt_samples", "Corrupt samples skipped.", list(labels), registry=registry)
    return gauges


_served: "weakref.WeakKeyDictionary[CollectorRegistry, dict[str, object]]" = weakref.WeakKeyDictionary()
_served_lock = threading.Lock()


def served_metrics(registry: CollectorRegistry) -> dict[str, object]:
    """The run metrics in ``registry`` (a server's), created once per registry and shared by its runs."""
    with _served_lock:
        if registry not in _served:
            # The experiment as a label too: a scraped server has no grouping key to carry it.
            _served[registry] = _metrics(registry, ("experiment", "run"))
        return _served[registry]


class RunGauges:
    """Per-run metrics; :meth:`observe` takes one ``metrics.jsonl`` record.

    ``served``: the registry of the server running this run (its metrics port shows them).
    """

    def __init__(self, experiment: str, run_id: str, index: int = 0, rank: int | None = None,
                 served: CollectorRegistry | None = None):
        self.run_id = run_id
        self.experiment = experiment
        self.served = served_metrics(served) if served is not None else None
        self.grouping_key = {"experiment": experiment, "stage": "train", "index": str(index)}
        if rank is not None:  # one group per rank of a distributed run: ranks never overwrite each other
            self.grouping_key["rank"] = str(rank)
        self.push_registry = CollectorRegistry()
        self.pushed = _metrics(self.push_registry, ("run",))
        self.gateway = os.environ.get(PUSHGATEWAY_ENV) or None

    def observe(self, record: dict) -> None:
        targets = [(self.pushed, (self.run_id,))]
        if self.served is not None:
            targets.append((self.served, (self.experiment, self.run_id)))
        for target, key in targets:
            for field, (name, _help, split) in _VALUES.items():
                if record.get(field) is not None:
                    target[name].labels(*key, split).set(record[field])
            target["epoch"].labels(*key).set(record["epoch"] + 1)
            target["lr"].labels(*key).set(record.get("lr", 0.0))
            target["images_per_s"].labels(*key).set(record.get("images_per_s", 0.0))
            target["samples"].labels(*key).inc(record.get("train_samples", 0))
            target["corrupt"].labels(*key).inc(record.get("corrupt_samples", 0))
        self.push()

    def push(self) -> None:
        """Push to the Pushgateway when one is configured; failures are logged, not fatal."""
        if not self.gateway:
            return
        try:
            push_to_gateway(self.gateway, job=TRAIN_PUSH_JOB_NAME, registry=self.push_registry,
                            grouping_key=self.grouping_key, timeout=10)
        except OSError as exc:  # a monitoring outage must not kill a training run
            _log.warning("could not push metrics to %s: %s", self.gateway, exc)
