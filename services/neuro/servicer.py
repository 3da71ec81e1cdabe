"""gRPC adapter of the neuro stage: ``flatland.v1.Neuro`` (Score, CompareModels) over :mod:`services.neuro.scoring`."""

from __future__ import annotations

import contextvars
import queue
import threading

import grpc

from flatland.v1 import common_pb2, neuro_pb2, neuro_pb2_grpc
from services.common.cancel import check_cancelled
from services.common.spec_servicer import spec_from_text
from services.common.status import abort_with
from services.common.store import Store
from services.common.workers import WorkerPool
from services.neuro.scoring import compare_models, score_run, scoring_spec

SERVICE_NAME = "flatland.v1.Neuro"


def _ref(store: Store, key: str) -> common_pb2.StoreRef:
    size, digest = store.checksum(key)
    return common_pb2.StoreRef(key=key, size=size, sha256=digest)


def _brainscore_message(block: dict | None) -> neuro_pb2.BrainScore | None:
    """The JSON's ``brainscore`` block as a message; ``ceiling`` and ``score`` stay unset where the JSON has null."""
    if not block:
        return None
    optional = {name: block[name] for name in ("ceiling", "score") if block.get(name) is not None}
    return neuro_pb2.BrainScore(raw=block["raw"], error=block["error"], **optional)


def _benchmark_message(store: Store, record: dict) -> neuro_pb2.BenchmarkScore:
    layers = []
    for region, per_layer in record["predictivity"].items():
        for layer, s in per_layer.items():
            ci = s.get("raw_ci", [s["raw"], s["raw"]])
            layers.append(neuro_pb2.LayerScore(
                region=region, layer=layer, raw=s["raw"], ceiling=s["ceiling"], r_over_ceiling=s["r_over_ceiling"],
                r2_over_ceiling=s["r2_over_ceiling"], split_std=s["split_std"], raw_ci_low=ci[0], raw_ci_high=ci[1],
                rsa=record["rsa"][region][layer], brainscore=_brainscore_message(s.get("brainscore")),
            ))
    key = f"scores/{record['run_id']}/{record['benchmark']}.json"
    return neuro_pb2.BenchmarkScore(
        run=record["run"], run_id=record["run_id"], benchmark=record["benchmark"], skipped=bool(record.get("skipped")),
        score_json=_ref(store, key), figures=[_ref(store, k) for k in record["figures"]], layers=layers,
        best_layers=[f"{r}={l}" for r, l in record["best_layer"].items()], normalisation=record["normalisation"],
        synthetic=bool(record["data"]["synthetic"]),
    )


class NeuroServicer(neuro_pb2_grpc.NeuroServicer):
    def __init__(self, store: Store, workers: int = 1):
        self.store = store
        self.workers = workers  # processes Score splits its (run, benchmark) pairs over (1: a thread of this process)

    def Score(self, request, context):
        try:
            spec = spec_from_text(request.scoring.spec)
            scoring = scoring_spec(spec, request.scoring.name)
            runs = list(request.runs) or scoring.runs
            benchmarks = list(request.benchmarks) or scoring.benchmarks
            for name, known, what in ((runs, scoring.runs, "runs"), (benchmarks, scoring.benchmarks, "benchmarks")):
                unknown = sorted(set(name) - set(known))
                if unknown:
                    raise ValueError(f"{what}: {unknown} not in scoring '{scoring.name}' (known: {known})")
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status code
            abort_with(context, exc)
        pairs = [(r, b) for r in runs for b in benchmarks]
        workers = min(self.workers, len(pairs))
        if workers > 1:
            yield from self._score_across_workers(spec, scoring, pairs, request.force, workers, context)
            return
        events: queue.Queue = queue.Queue()
        outcome: dict = {}

        def report(event) -> None:
            check_cancelled("Score")  # between units of work: stop once the client is gone
            events.put(event)

        def work():
            try:
                records = []
                for i, (run, benchmark) in enumerate(pairs):
                    task = f"neuro:{scoring.name}:{run}:{benchmark}"
                    events.put(common_pb2.ProgressEvent(task=task, done=i, total=len(pairs), message="scoring"))
                    records.append(score_run(
                        spec, self.store, scoring, run, benchmark, force=request.force,
                        progress=lambda t, d, n, task=task: report(common_pb2.ProgressEvent(
                            task=task, done=d, total=n, message=t)),
                    ))
                outcome["records"] = records
            except BaseException as exc:  # noqa: BLE001 - reported to the client below
                outcome["error"] = exc
            finally:
                events.put(None)

        # The worker runs in a copy of this call's context, so it sees the call's cancellation scope.
        worker = threading.Thread(target=contextvars.copy_context().run, args=(work,), name="neuro-score", daemon=True)
        worker.start()
        while (event := events.get()) is not None:
            if not context.is_active():
                break
            yield neuro_pb2.ScoreResponse(progress=event)
        worker.join()
        if "error" in outcome:
            abort_with(context, outcome["error"])
        records = outcome.get("records", [])
        yield neuro_pb2.ScoreResponse(progress=common_pb2.ProgressEvent(
            task=f"neuro:{scoring.name}", done=len(pairs), total=len(pairs),
            skipped=sum(bool(r.get("skipped")) for r in records), message="done", finished=True))
        yield neuro_pb2.ScoreResponse(result=neuro_pb2.ScoreResult(
            scores=[_benchmark_message(self.store, r) for r in records]))

    def _score_across_workers(self, spec, scoring, pairs: list, force: bool, workers: int, context):
        """Score's pairs split over ``workers`` processes (as the neuro job splits its tasks); they stop when the
        call is cancelled, its deadline passes or the server stops."""
        records: dict[int, dict] = {}
        try:
            with WorkerPool("services.neuro.job:score_pairs_share", (spec, scoring.name, pairs, force),
                            self.store.url, workers, name=f"neuro-{scoring.name}") as pool:
                for message in pool.messages():
                    if message[0] == "progress":
                        _, _worker, task, done, total = message
                        yield neuro_pb2.ScoreResponse(progress=common_pb2.ProgressEvent(
                            task=task, done=done, total=total, message="scoring"))
                    else:
                        position, record = message[2]
                        records[position] = record
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status code
            abort_with(context, exc)
        ordered = [records[i] for i in range(len(pairs))]
        yield neuro_pb2.ScoreResponse(progress=common_pb2.ProgressEvent(
            task=f"neuro:{scoring.name}", done=len(pairs), total=len(pairs),
            skipped=sum(bool(r.get("skipped")) for r in ordered), message="done", finished=True))
        yield neuro_pb2.ScoreResponse(result=neuro_pb2.ScoreResult(
            scores=[_benchmark_message(self.store, r) for r in ordered]))

    def CompareModels(self, request, context):
        try:
            spec = spec_from_text(request.scoring.spec)
            scoring = scoring_spec(spec, request.scoring.name)
            record = compare_models(spec, self.store, scoring, request.run_a, request.run_b, request.benchmark,
                                    layers_a=list(request.layers_a) or None, layers_b=list(request.layers_b) or None,
                                    force=request.force)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status code
            abort_with(context, exc)
        key = record["figure"].removesuffix(".png") + ".json"
        return neuro_pb2.CompareModelsResponse(
            layers_a=record["layers_a"], layers_b=record["layers_b"],
            similarity=[v for row in record["similarity"] for v in row], method=record["method"],
            rdm_metric=record["rdm_metric"], result_json=_ref(self.store, key), figure=_ref(self.store, record["figure"]),
        )


def register(server: grpc.Server, store: Store, registry=None, *, workers: int = 1) -> list[str]:
    """Add the Neuro service to ``server`` (``Score`` over ``workers`` processes); return its full name."""
    neuro_pb2_grpc.add_NeuroServicer_to_server(NeuroServicer(store, workers), server)
    return [SERVICE_NAME]
