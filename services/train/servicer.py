"""gRPC adapter of the train stage: ``flatland.v1.Train`` over :mod:`services.train.loop` and ``transfer``.

Runs execute in background threads of the server process, one per run; the servicer
keeps their state in memory and reads finished runs back from the store, so a
restarted server still answers ``GetRun``/``WatchRun`` for runs it finished earlier.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field

import grpc

from flatland.v1 import common_pb2, train_pb2, train_pb2_grpc
from services.common.cancel import server_stopping
from services.common.errors import FlatlandError, ObjectNotFoundError, SpecError
from services.common.spec.experiment import ExperimentSpec
from services.common.spec_servicer import spec_from_text
from services.common.status import bounded_message, message_for, status_for_exception
from services.common.store import Store
from services.train.api import EVALUATIONS_ITEM, evaluations_run_id, has_evaluations
from services.train.job import run_spec_evaluations
from services.train.loop import DistContext, PretrainRun
from services.train.mixes import mix_for_run
from services.train.models import check_model_name
from services.train.pretrained import weights_enum, weights_file
from services.train.transfer import run_transfer, sources_for, transfer_id

SERVICE_NAME = "flatland.v1.Train"
_TERMINAL = (train_pb2.RUN_STATE_SUCCEEDED, train_pb2.RUN_STATE_FAILED, train_pb2.RUN_STATE_CANCELLED)
_METRIC_FIELDS = ("train_loss", "train_top1", "train_top5", "val_loss", "val_top1", "val_top5", "lr",
                  "train_samples", "corrupt_samples", "images_per_s", "seconds")


def epoch_message(record: dict) -> train_pb2.EpochMetrics:
    values = {k: float(v) for k, v in record.items()
              if k != "epoch" and k not in _METRIC_FIELDS and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return train_pb2.EpochMetrics(epoch=record["epoch"], values=values,
                                  **{k: record[k] for k in _METRIC_FIELDS if record.get(k) is not None})


@dataclass
class RunHandle:
    """A run the server knows: its state, what it reported so far, how to stop it."""

    run_id: str
    kind: str  # "pretrain" | "transfer"
    state: int = train_pb2.RUN_STATE_RUNNING
    metrics: list[dict] = field(default_factory=list)
    transfer_results: list[dict] = field(default_factory=list)
    progress: tuple[str, int, int] = ("", 0, 0)
    error: BaseException | None = None
    result_key: str = ""
    cancel: threading.Event = field(default_factory=threading.Event)
    changed: threading.Condition = field(default_factory=threading.Condition)
    version: int = 0

    def update(self, **changes) -> None:
        with self.changed:
            for key, value in changes.items():
                setattr(self, key, value)
            self.version += 1
            self.changed.notify_all()


class TrainServicer(train_pb2_grpc.TrainServicer):
    def __init__(self, store: Store, registry=None):
        self.store = store
        self.registry = registry  # the server's metrics registry: loss/top-1 of its runs are exported there
        self._runs: dict[str, RunHandle] = {}
        self._lock = threading.Lock()

    # -- starting -----------------------------------------------------------------------
    def _plan(self, request: common_pb2.ExperimentItem) -> tuple[ExperimentSpec, str, str, str]:
        """(spec, kind, run id, result key) after checking everything that can be checked up front."""
        spec = spec_from_text(request.spec)
        name = request.name
        if any(p.name == name for p in spec.pretrain):
            run = next(p for p in spec.pretrain if p.name == name)
            check_model_name(run.model, run.task)
            if run.kind == "torchvision_pretrained":
                file = weights_file(run, weights_enum(run))  # weights match the model? file there?
                if not file.is_file():
                    raise ObjectNotFoundError(f"pretrain '{run.name}': the {run.weights} weights file {file} does not exist")
            else:
                mix_for_run(spec, run, self.store)  # datasets rendered? budget within the classes?
            run_id = spec.run_id(name)
            return spec, "pretrain", run_id, f"runs/{run_id}/done.json"
        if any(t.name == name for t in spec.transfer):
            transfer = next(t for t in spec.transfer if t.name == name)
            check_model_name(transfer.model)
            sources_for(spec, transfer, self.store)  # pre-training runs finished?
            tid = transfer_id(spec, transfer)
            return spec, "transfer", tid, f"runs/{tid}/transfer.json"
        if name == EVALUATIONS_ITEM:
            if not has_evaluations(spec):
                raise SpecError(f"name: '{name}': the spec has no evaluation section (shape_bias, depth_probe or "
                                "recoverability) to run")
            runs = dict.fromkeys(r for e in spec.evaluation.shape_bias + spec.evaluation.depth_probe for r in e.runs)
            missing = [r for r in runs if not self.store.exists(f"runs/{spec.run_id(r)}/done.json")]
            if missing:
                raise FlatlandError(f"name: '{name}': pre-training runs {missing} have not finished; start them first")
            run_id = evaluations_run_id(spec)
            return spec, "evaluation", run_id, f"runs/{run_id}/evaluation.json"
        known = [p.name for p in spec.pretrain] + [t.name for t in spec.transfer]
        raise SpecError(f"name: '{name}' is neither a pretrain run nor a transfer of the spec, nor "
                        f"'{EVALUATIONS_ITEM}' (known: {known})")

    def StartRun(self, request, context):
        try:
            spec, kind, run_id, result_key = self._plan(request)
        except Exception as exc:  # noqa: BLE001 - a bad request becomes a status, never a dead server
            context.abort(status_for_exception(exc), message_for(exc))
        with self._lock:
            handle = self._runs.get(run_id)
            if handle is not None and handle.state == train_pb2.RUN_STATE_RUNNING:
                return train_pb2.RunRef(run_id=run_id)
            handle = RunHandle(run_id, kind, result_key=result_key)
            self._runs[run_id] = handle
        stopping = server_stopping()  # a stopping server cancels its runs (they resume from checkpoints)
        thread = threading.Thread(target=self._execute, args=(handle, spec, request.name, stopping),
                                  name=f"train-{run_id}", daemon=True)
        thread.start()
        return train_pb2.RunRef(run_id=run_id)

    def _execute(self, handle: RunHandle, spec: ExperimentSpec, name: str, stopping: threading.Event) -> None:
        def progress(task: str, done: int, total: int) -> None:
            handle.update(progress=(task, done, total))

        def should_stop() -> bool:
            return handle.cancel.is_set() or stopping.is_set()

        try:
            if handle.kind == "pretrain":
                import torch

                device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
                run = PretrainRun(spec, name, self.store, ctx=DistContext(device=device), metrics_registry=self.registry)
                run.execute(progress=progress, should_stop=should_stop,
                            on_epoch=lambda record: handle.update(metrics=handle.metrics + [record]))
                records = self._stored_metrics(handle.run_id)
                handle.update(metrics=records or handle.metrics, state=train_pb2.RUN_STATE_SUCCEEDED)
            elif handle.kind == "evaluation":
                summary = run_spec_evaluations(spec, self.store, progress=progress)
                self.store.put_json(handle.result_key, summary)
                self.store.put_json(f"runs/{handle.run_id}/done.json", {"kind": "evaluation"})
                handle.update(state=train_pb2.RUN_STATE_SUCCEEDED)
            else:
                summary = run_transfer(spec, name, self.store, progress=progress, should_stop=should_stop)
                handle.update(transfer_results=summary["results"], state=train_pb2.RUN_STATE_SUCCEEDED)
        except Exception as exc:  # noqa: BLE001 - reported through GetRun / WatchRun
            cancelled = should_stop()
            handle.update(error=exc, state=train_pb2.RUN_STATE_CANCELLED if cancelled else train_pb2.RUN_STATE_FAILED)

    # -- reading ------------------------------------------------------------------------
    def _stored_metrics(self, run_id: str) -> list[dict]:
        key = f"runs/{run_id}/metrics.jsonl"
        if not self.store.exists(key):
            return []
        return [json.loads(line) for line in self.store.get_bytes(key).decode().splitlines() if line.strip()]

    def _handle(self, run_id: str, context) -> RunHandle:
        """The live handle, or one rebuilt from the store for a run finished earlier."""
        with self._lock:
            handle = self._runs.get(run_id)
        if handle is not None:
            return handle
        try:
            if self.store.exists(f"runs/{run_id}/done.json"):
                if self.store.exists(f"runs/{run_id}/evaluation.json"):
                    return RunHandle(run_id, "evaluation", train_pb2.RUN_STATE_SUCCEEDED,
                                     result_key=f"runs/{run_id}/evaluation.json")
                if self.store.exists(f"runs/{run_id}/transfer.json"):
                    results = self.store.get_json(f"runs/{run_id}/transfer.json")["results"]
                    return RunHandle(run_id, "transfer", train_pb2.RUN_STATE_SUCCEEDED, transfer_results=results,
                                     result_key=f"runs/{run_id}/transfer.json")
                return RunHandle(run_id, "pretrain", train_pb2.RUN_STATE_SUCCEEDED,
                                 metrics=self._stored_metrics(run_id), result_key=f"runs/{run_id}/done.json")
        except Exception as exc:  # noqa: BLE001 - e.g. an invalid key in run_id
            context.abort(status_for_exception(exc), bounded_message(f"run_id: {message_for(exc)}"))
        context.abort(grpc.StatusCode.NOT_FOUND, bounded_message(f"run_id: no run {run_id!r} on this server or in the store"))

    def _status(self, handle: RunHandle) -> train_pb2.RunStatus:
        status = train_pb2.RunStatus(
            run_id=handle.run_id, kind=handle.kind, state=handle.state,
            metrics=[epoch_message(r) for r in handle.metrics],
            transfer_results=[train_pb2.TransferResult(source=r["source"], target=r["target"], mode=r["mode"],
                                                       test_top1=r.get("test_top1") or 0.0, lr=r["lr"],
                                                       weight_decay=r["weight_decay"], metric=r.get("metric", "top1"),
                                                       test_score=r.get("test_score", r.get("test_top1", 0.0))) for r in handle.transfer_results],
        )
        if handle.error is not None:
            status.error.CopyFrom(self._error(handle))
        if handle.state == train_pb2.RUN_STATE_SUCCEEDED:
            status.result.key = handle.result_key
        return status

    @staticmethod
    def _error(handle: RunHandle) -> common_pb2.ErrorDetail:
        exc = handle.error
        return common_pb2.ErrorDetail(item=handle.run_id, code=status_for_exception(exc).name, message=message_for(exc))

    def GetRun(self, request, context):
        return self._status(self._handle(request.run_id, context))

    def CancelRun(self, request, context):
        handle = self._handle(request.run_id, context)
        handle.cancel.set()
        return self._status(handle)

    def WatchRun(self, request, context):
        handle = self._handle(request.run_id, context)
        sent_metrics = 0
        seen_version = -1
        last_progress = None
        stopping = server_stopping()
        while context.is_active() and not stopping.is_set():
            with handle.changed:
                if handle.version == seen_version and handle.state not in _TERMINAL:
                    handle.changed.wait(timeout=1.0)
                    continue
                seen_version = handle.version
                state, metrics = handle.state, list(handle.metrics)
                task, done, total = handle.progress
            if len(metrics) == sent_metrics and (task, done, total) != last_progress and state not in _TERMINAL and task:
                yield train_pb2.RunEvent(state=state, progress=common_pb2.ProgressEvent(task=task, done=done, total=total))
            last_progress = (task, done, total)
            for record in metrics[sent_metrics:]:
                yield train_pb2.RunEvent(state=train_pb2.RUN_STATE_RUNNING, metrics=epoch_message(record),
                                         progress=common_pb2.ProgressEvent(task=task or f"train:{handle.run_id}",
                                                                           done=record["epoch"] + 1, total=total,
                                                                           message=f"epoch {record['epoch']} done"))
            sent_metrics = len(metrics)
            if state in _TERMINAL:
                final = train_pb2.RunEvent(state=state, progress=common_pb2.ProgressEvent(
                    task=task or f"train:{handle.run_id}", done=done, total=total, finished=True,
                    message=train_pb2.RunState.Name(state)))
                if handle.error is not None:
                    final.error.CopyFrom(self._error(handle))
                if state == train_pb2.RUN_STATE_SUCCEEDED:
                    final.progress.outputs.add(key=handle.result_key)
                yield final
                return


def register(server: grpc.Server, store: Store, registry=None, *, workers: int = 1) -> list[str]:
    """Add the Train servicer to ``server``; return its full service name.

    ``registry``: the server's Prometheus registry (what its metrics port exposes); the
    runs' loss, top-1 and throughput go there. ``workers``: unused, a run is one process.
    """
    train_pb2_grpc.add_TrainServicer_to_server(TrainServicer(store, registry), server)
    return [SERVICE_NAME]
