"""gRPC adapter of render: ``flatland.v1.Render`` over the library (no logic of its own)."""

from __future__ import annotations

import json
import threading

import grpc
from pydantic import ValidationError

from flatland.v1 import common_pb2, render_pb2, render_pb2_grpc
from services.common.cancel import check_cancelled
from services.common.errors import ResourceLimitError, SpecError
from services.common.spec.experiment import format_validation_error
from services.common.spec.loading import parse_json_field
from services.common.spec.render import RenderSettings
from services.common.spec_servicer import dataset_from_item
from services.common.status import abort_with
from services.common.store import Store
from services.common.workers import WorkerPool

SERVICE_NAME = "flatland.v1.Render"
MAX_IMAGE_SIZE = 1024
MAX_VIEWS = 64

# One GL context serves every request thread: OpenGL contexts are current per thread.
_GL_LOCK = threading.Lock()


def parse_settings(settings_json: str) -> RenderSettings:
    data = parse_json_field(settings_json, "settings_json", default={})  # bounded: no deep nesting
    if not isinstance(data, dict):
        raise ValueError(f"settings_json: must be a JSON object of render settings, got {type(data).__name__}")
    try:
        return RenderSettings.model_validate(data)
    except ValidationError as exc:
        raise SpecError("settings_json." + format_validation_error(exc).replace("\n", "; settings_json.")) from None


def render_images(store: Store, request) -> tuple[list[dict], str]:
    """The work behind ``RenderImages``: a list of {rgb_png, depth_npy, mask_png, record_json} and the GL string."""
    from services.render.renderers.gl import check_mesh, mesh_frame, validate_record
    from services.render.sampling import sample_view
    from services.render.views import encode_npy, encode_png, get_renderer, load_glb, load_mesh

    records = []
    if len(request.records_json) > MAX_VIEWS:
        raise ResourceLimitError(f"records_json: {len(request.records_json)} records, at most {MAX_VIEWS} per request")
    for i, text in enumerate(request.records_json):
        record = parse_json_field(text, f"records_json[{i}]")
        if not isinstance(record, dict):
            raise ValueError(f"records_json[{i}]: must be a JSON object (a render record), got {type(record).__name__}")
        records.append(record)
    for i, record in enumerate(records):  # all of them before any is drawn
        validate_record(record, f"records_json[{i}]")
    settings = parse_settings(request.settings_json)
    count = len(records) or request.count
    if count < 1:
        raise ValueError("count: must be >= 1 (or give records_json)")
    if count > MAX_VIEWS:
        raise ResourceLimitError(f"count: {count} views requested, at most {MAX_VIEWS} per request")
    sizes = {int(r.get("image_size", 0)) for r in records} or {settings.image_size}
    if max(sizes) > MAX_IMAGE_SIZE:
        raise ResourceLimitError(f"image_size: {max(sizes)} pixels requested, at most {MAX_IMAGE_SIZE}")
    if request.class_index < 0 or request.instance < 0:
        raise ValueError("class_index and instance: must be >= 0")
    which = request.WhichOneof("mesh")
    if which == "mesh_key":
        mesh = load_mesh(store, request.mesh_key)  # ObjectNotFoundError -> NOT_FOUND
    elif which == "glb":
        mesh = load_glb(request.glb)
    else:
        raise ValueError("mesh: give mesh_key or glb")
    check_mesh(mesh)  # DegenerateMeshError (a ValueError) -> INVALID_ARGUMENT
    centre, radius = mesh_frame(mesh)
    if not records:
        records = [sample_view(settings, root_seed=int(request.seed), dataset_id="render-images",
                               class_index=request.class_index, instance=request.instance, view=v,
                               mesh_centre=centre, mesh_radius=radius,
                               mesh_key=request.mesh_key if which == "mesh_key" else "") for v in range(count)]
    images = []
    with _GL_LOCK:
        for record in records:
            check_cancelled("RenderImages")  # stop between views once the client is gone
            renderer = get_renderer(int(record["image_size"]), record.get("backend", "auto"))
            renderer.set_mesh(mesh, record["material"])
            view = renderer.render(record)
            item = {"rgb_png": encode_png(view.rgb), "record_json": json.dumps(record, sort_keys=True)}
            if request.include_depth:
                item["depth_npy"] = encode_npy(view.depth)
                item["mask_png"] = encode_png((view.mask * 255).astype("uint8"))
            images.append(item)
        gl = renderer.gl_renderer
    return images, gl


class RenderServicer(render_pb2_grpc.RenderServicer):
    """Thin adapter: parse the request, call the library, map errors to status codes."""

    def __init__(self, store: Store, workers: int = 1):
        self.store = store
        self.workers = workers  # processes for RenderDataset (1: render in the server's own process)

    def RenderImages(self, request, context):
        try:
            images, gl = render_images(self.store, request)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status, never a dead server
            abort_with(context, exc)
        return render_pb2.RenderImagesResponse(images=[render_pb2.RenderedImage(**i) for i in images], gl_renderer=gl)

    def RenderDataset(self, request, context):
        from services.render.api import consolidate_manifest
        from services.render.contact import write_contact_sheet
        from services.render.plan import shard_plan
        from services.render.keys import dataset_manifest_key
        from services.render.scratch import clean_stale_scratch

        try:
            spec, dataset = dataset_from_item(request.dataset)
            name = dataset.name
            dataset_id = spec.dataset_id(name)
            tasks = shard_plan(spec, name)
            clean_stale_scratch()  # tars a killed worker left in the temporary directory
            workers = max(1, min(self.workers, len(tasks)))
            skipped = 0
            shards = self._shards(spec, name, tasks, workers, context)
            try:
                for done, shard in enumerate(shards, start=1):
                    skipped += shard["skipped"]
                    errors = [common_pb2.ErrorDetail(item=f["item"], code="INVALID_ARGUMENT", message=f["message"])
                              for f in shard["failures"]]
                    yield render_pb2.RenderDatasetEvent(
                        progress=common_pb2.ProgressEvent(
                            task=f"render:{name}", done=done, total=len(tasks), skipped=skipped,
                            message=f"{shard['split']}-{shard['shard']:05d} "
                                    f"{'already done' if shard['skipped'] else 'written'}",
                            outputs=[common_pb2.StoreRef(key=shard["key"])]),
                        dataset_id=dataset_id, errors=errors)
            finally:
                shards.close()  # a client gone mid-stream: the worker processes stop here
            if not context.is_active():
                return
            if workers > 1:  # workers rewrite the manifest read-then-write: merge every shard's part record
                consolidate_manifest(spec, self.store, name)
            with _GL_LOCK:
                sheet = write_contact_sheet(spec, self.store, name)
            yield render_pb2.RenderDatasetEvent(
                progress=common_pb2.ProgressEvent(
                    task=f"render:{name}", done=len(tasks), total=len(tasks), skipped=skipped, finished=True,
                    message=f"{len(tasks)} shards ({skipped} already done)",
                    outputs=[common_pb2.StoreRef(key=dataset_manifest_key(dataset_id)), common_pb2.StoreRef(key=sheet)]),
                dataset_id=dataset_id)
        except Exception as exc:  # noqa: BLE001
            abort_with(context, exc)

    def _shards(self, spec, name: str, tasks: list, workers: int, context):
        """One dict per shard (split, shard, key, skipped, failures) as it finishes: in this process, or across
        ``workers`` processes (the Indexed-job split), which stop when the call is cancelled or this generator closed."""
        from services.render.output import render_shards

        if workers <= 1:
            dataset_id = spec.dataset_id(name)
            for task in tasks:
                if not context.is_active():
                    return
                with _GL_LOCK:  # the pooled GL contexts are shared with RenderImages
                    summary = render_shards(spec, self.store, [task])
                yield {"split": task.split, "shard": task.shard, "key": task.key(dataset_id),
                       "skipped": bool(summary["skipped"]), "failures": summary["failures"]}
            return
        with WorkerPool("services.render.job:render_dataset_share", (spec, name), self.store.url, workers,
                        name=f"render-{name}") as pool:
            for message in pool.messages():
                if message[0] == "event":
                    yield message[2]


def register(server: grpc.Server, store: Store, registry=None, *, workers: int = 1) -> list[str]:
    """Add the Render servicer to ``server`` (``RenderDataset`` over ``workers`` processes); return the full service names."""
    render_pb2_grpc.add_RenderServicer_to_server(RenderServicer(store, workers), server)
    return [SERVICE_NAME]
