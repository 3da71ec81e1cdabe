"""gRPC adapter of meshgen: ``flatland.v1.Meshgen`` over the library (no logic of its own)."""

from __future__ import annotations

import json

import grpc
from pydantic import ValidationError

from flatland.v1 import common_pb2, meshgen_pb2, meshgen_pb2_grpc
from services.common.errors import SpecError
from services.common.spec.experiment import format_validation_error
from services.common.spec.loading import parse_json_field
from services.common.spec_servicer import dataset_from_item
from services.common.status import abort_with
from services.common.store import Store
from services.common.workers import WorkerPool
from services.meshgen.dataset import iter_generate_dataset, manifest_key, missing_classes
from services.meshgen.job import shard_classes
from services.meshgen.registry import GeneratedItem, get_family

SERVICE_NAME = "flatland.v1.Meshgen"


def generate_mesh(family_name: str, params_json: str, seed: int, class_index: int, instance: int) -> GeneratedItem:
    """One item from request fields (the function behind ``GenerateMesh``).

    The family comes from ``family_name`` or, when that is empty, from the
    ``"family"`` field of ``params_json``; when both are given they must agree.
    """
    params = parse_json_field(params_json, "params_json", default={})  # bounded: no deep nesting
    if not isinstance(params, dict):
        raise ValueError("params_json: must be a JSON object of the family's parameters")
    named = params.get("family")
    if family_name and named and named != family_name:
        raise ValueError(f"family: request says {family_name!r} but params_json.family says {named!r}")
    family = get_family(family_name or named or "")
    if class_index < 0:
        raise ValueError(f"class_index: must be >= 0, got {class_index}")
    if instance < 0:
        raise ValueError(f"instance: must be >= 0, got {instance}")
    try:
        validated = family.parse_params(params)
    except ValidationError as exc:
        raise SpecError("params_json." + format_validation_error(exc).replace("\n", "; params_json.")) from None
    return family.generate_item(validated, seed, class_index, instance)


class MeshgenServicer(meshgen_pb2_grpc.MeshgenServicer):
    """Thin adapter: parse the request, call the library, map errors to status codes."""

    def __init__(self, store: Store, workers: int = 1):
        self.store = store
        self.workers = workers  # processes for GenerateDataset (1: in the server's own process)

    def GenerateMesh(self, request, context):
        try:
            item = generate_mesh(request.family, request.params_json, request.seed, request.class_index, request.instance)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status, never a dead server
            abort_with(context, exc)
        return meshgen_pb2.GenerateMeshResponse(
            data=item.data,
            content_type="application/json" if item.relative_key.endswith(".json") else "model/gltf-binary",
            stats_json=json.dumps(item.stats, sort_keys=True),
            item_seed=item.seed,
            relative_key=item.relative_key,
        )

    def GenerateDataset(self, request, context):
        try:
            spec, dataset = dataset_from_item(request.dataset)
            name = dataset.name
            classes = shard_classes(dataset.classes, request.shard_index, request.shard_count or 1)
            dataset_id = spec.dataset_id(name)
            workers = max(1, min(self.workers, len(classes)))
            if workers <= 1:
                yield from self._in_process(spec, name, classes, dataset_id, context)
                return
            steps = self._across_workers(spec, name, classes, workers)
            done = skipped = 0
            try:
                for step in steps:
                    done += 1
                    skipped += not step["generated"]
                    yield meshgen_pb2.GenerateDatasetEvent(
                        progress=common_pb2.ProgressEvent(
                            task=f"meshgen:{name}", done=done, total=len(classes), skipped=skipped,
                            message=f"class {step['class_index']} {'written' if step['generated'] else 'already done'}",
                            outputs=[common_pb2.StoreRef(key=k, size=n, sha256=h) for k, n, h in step["entries"]]),
                        dataset_id=dataset_id, class_index=step["class_index"])
            finally:
                steps.close()  # a client gone mid-stream: the worker processes stop here
            if not context.is_active():
                return
            missing_classes(spec, name, self.store)  # merge classes a concurrent manifest rewrite dropped
            yield meshgen_pb2.GenerateDatasetEvent(
                progress=common_pb2.ProgressEvent(
                    task=f"meshgen:{name}", done=done, total=len(classes), skipped=skipped, finished=True,
                    message=f"{done}/{len(classes)} classes ({skipped} already done)",
                    outputs=[common_pb2.StoreRef(key=manifest_key(dataset_id))]),
                dataset_id=dataset_id, class_index=-1)
        except Exception as exc:  # noqa: BLE001
            abort_with(context, exc)

    def _across_workers(self, spec, name: str, classes: list[int], workers: int):
        """One dict per class (class_index, generated, entries) as the worker processes finish them; they stop
        when the call is cancelled or this generator is closed."""
        with WorkerPool("services.meshgen.job:generate_classes_share", (spec, name, classes), self.store.url,
                        workers, name=f"meshgen-{name}") as pool:
            for message in pool.messages():
                if message[0] == "event":
                    yield message[2]

    def _in_process(self, spec, name: str, classes: list[int], dataset_id: str, context):
        for step in iter_generate_dataset(spec, name, self.store, classes=classes):
            if not context.is_active():
                return
            outputs = [common_pb2.StoreRef(key=e.key, size=e.size, sha256=e.sha256) for e in step.entries]
            if step.finished:
                outputs = [common_pb2.StoreRef(key=manifest_key(dataset_id))]
            message = (
                f"{step.done}/{step.total} classes ({step.skipped} already done)" if step.finished
                else f"class {step.class_index} {'written' if step.generated else 'already done'}"
            )
            yield meshgen_pb2.GenerateDatasetEvent(
                progress=common_pb2.ProgressEvent(
                    task=step.task, done=step.done, total=step.total, skipped=step.skipped,
                    message=message, finished=step.finished, outputs=outputs,
                ),
                dataset_id=dataset_id,
                class_index=-1 if step.class_index is None else step.class_index,
            )

    def FitMesh(self, request, context):
        from services.meshgen import fit as fitting  # torch: imported when a fit is asked for

        try:
            params, target, fit_id = fitting.prepare(
                request.params_json, mesh=request.mesh, mesh_format=request.mesh_format or "glb",
                masks_png=list(request.masks_png), records=request.records_json)
            task = f"meshgen:fit:{fit_id}"
            for event in fitting.iter_fit(target, params):
                if not context.is_active():
                    return
                if isinstance(event, fitting.FitStep):
                    yield meshgen_pb2.FitMeshEvent(
                        progress=common_pb2.ProgressEvent(task=task, done=event.iteration, total=event.total,
                                                          message=f"step {event.iteration}: loss {event.loss:.5g}"),
                        fit_id=fit_id,
                        losses_json=json.dumps({"iteration": event.iteration, "loss": event.loss, **event.losses}),
                    )
                    continue
                outputs = []
                if request.store_outputs:
                    outputs = [common_pb2.StoreRef(key=e.key, size=e.size, sha256=e.sha256)
                               for e in fitting.write_fit(self.store, fit_id, event, params)]
                metrics = {**event.metrics, "timing": event.timing}
                yield meshgen_pb2.FitMeshEvent(
                    progress=common_pb2.ProgressEvent(
                        task=task, done=params.iterations, total=params.iterations, finished=True, outputs=outputs,
                        message=" ".join(f"{k} {metrics[k]:.4g}" for k in ("held_out_iou", "chamfer", "fscore")
                                         if k in metrics)),
                    fit_id=fit_id, mesh_glb=event.mesh.export(file_type="glb"),
                    metrics_json=json.dumps(metrics, sort_keys=True))
        except Exception as exc:  # noqa: BLE001
            abort_with(context, exc)


def register(server: grpc.Server, store: Store, registry=None, *, workers: int = 1) -> list[str]:
    """Add the Meshgen servicer to ``server`` (``GenerateDataset`` over ``workers`` processes); return the full service names."""
    meshgen_pb2_grpc.add_MeshgenServicer_to_server(MeshgenServicer(store, workers), server)
    return [SERVICE_NAME]
