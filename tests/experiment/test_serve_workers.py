"""`flatland serve` on every core: served GenerateDataset / RenderDataset split over worker processes write the
same bytes as one process, and a cancelled call, a passed deadline or a stopping server stops every worker,
leaving a store the next call resumes. Real servers on loopback, real worker processes."""

from __future__ import annotations

import multiprocessing
import threading
import time

import grpc
import pytest
import yaml

from flatland.v1 import common_pb2, meshgen_pb2, meshgen_pb2_grpc, render_pb2, render_pb2_grpc
from services.common.server import start_server
from services.common.spec import parse_spec
from services.common.store import LocalStore
from tests.experiment.test_local_parallel import SPEC, store_files

# A mesh dataset and a fractal one, small.
SMALL = {**SPEC, "name": "serve-small", "datasets": [
    {"name": "shapes", "family": {"family": "procsynth"}, "classes": 3, "instances_per_class": 2,
     "render": {"image_size": 32, "views_per_instance": 4, "shard_size": 2}},
    {"name": "fr", "family": {"family": "fractal2d", "search_points": 5000, "search_size": 64}, "classes": 3,
     "instances_per_class": 1, "fractal_render": {"image_size": 32, "points": 5000, "drawings_per_variant": 2,
                                                  "shard_size": 5}}]}
# Enough shards to stop part-way: 33 shards of 3 images at 64 x 64 (train and val).
SLOW = {**SPEC, "name": "serve-slow", "datasets": [
    {"name": "shapes", "family": {"family": "procsynth"}, "classes": 4, "instances_per_class": 2,
     "render": {"image_size": 64, "views_per_instance": 12, "shard_size": 3}}]}


def item(spec: dict, name: str) -> common_pb2.ExperimentItem:
    return common_pb2.ExperimentItem(spec=common_pb2.SpecText(text=yaml.safe_dump(spec)), name=name)


def serve(store, workers: int):
    running = start_server("all", store, port=0, metrics_port=None, workers=workers)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    return running, channel, meshgen_pb2_grpc.MeshgenStub(channel), render_pb2_grpc.RenderStub(channel)


def make_all(spec: dict, meshgen, render) -> dict[str, list]:
    events = {}
    for dataset in spec["datasets"]:
        events[f"meshgen:{dataset['name']}"] = list(meshgen.GenerateDataset(
            meshgen_pb2.GenerateDatasetRequest(dataset=item(spec, dataset["name"])), timeout=300))
    for dataset in spec["datasets"]:
        events[f"render:{dataset['name']}"] = list(render.RenderDataset(
            render_pb2.RenderDatasetRequest(dataset=item(spec, dataset["name"])), timeout=300))
    return events


def _workers() -> list:
    return [p for p in multiprocessing.active_children() if p.name.startswith(("render-", "meshgen-"))]


def _drain(call):
    try:
        return list(call)
    except grpc.RpcError as exc:
        return exc


def no_workers_left(timeout: float = 30.0) -> bool:
    """True once this process has no live worker process (the server runs in it, so its workers are our children)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _workers():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """SLOW made by a server that works in its own process (workers=1)."""
    root = tmp_path_factory.mktemp("ref") / "store"
    running, channel, meshgen, render = serve(LocalStore(root), workers=1)
    try:
        make_all(SLOW, meshgen, render)
    finally:
        channel.close()
        running.stop(grace=1.0)
    return root


@pytest.mark.slow
def test_served_datasets_on_two_workers_are_byte_identical_to_one(tmp_path):
    stores = {}
    for workers in (1, 2):
        root = tmp_path / f"w{workers}"
        running, channel, meshgen, render = serve(LocalStore(root), workers)
        try:
            events = make_all(SMALL, meshgen, render)
        finally:
            channel.close()
            running.stop(grace=1.0)
        stores[workers] = store_files(root)
        shapes = events["render:shapes"]
        total = shapes[-1].progress.total
        assert [e.progress.done for e in shapes[:-1]] == list(range(1, total + 1)) and shapes[-1].progress.finished
        assert total >= 6 and shapes[-1].progress.skipped == 0
        assert len({o.key for e in shapes[:-1] for o in e.progress.outputs}) == total  # every shard once
        fractal = events["meshgen:fr"]
        assert sorted(e.class_index for e in fractal[:-1]) == [0, 1, 2] and fractal[-1].progress.finished
        assert {o.key for e in fractal[:-1] for o in e.progress.outputs}  # every class names what it wrote
    assert no_workers_left()
    assert sorted(stores[2]) == sorted(stores[1])
    assert [k for k in stores[1] if stores[1][k] != stores[2][k]] == []


def _first_event_then(call, action) -> None:
    for event in call:
        if event.progress.done >= 1:
            action()
            break


def assert_resumable(root, reference) -> None:
    """Nothing half-written: every file left is one the uninterrupted run also wrote (manifests may lag)."""
    reference_files, stopped = store_files(reference), store_files(root)
    assert len(stopped) < len(reference_files)
    assert [k for k in stopped if k not in reference_files
            or (stopped[k] != reference_files[k] and "manifest" not in k)] == []


@pytest.mark.slow
def test_cancel_deadline_and_server_stop_stop_every_worker_and_the_store_resumes(tmp_path, reference):
    root = tmp_path / "store"
    running, channel, meshgen, render = serve(LocalStore(root), workers=2)
    try:
        list(meshgen.GenerateDataset(meshgen_pb2.GenerateDatasetRequest(dataset=item(SLOW, "shapes")), timeout=300))
        request = render_pb2.RenderDatasetRequest(dataset=item(SLOW, "shapes"))

        # 1. The client cancels after the first shard.
        call = render.RenderDataset(request, timeout=300)
        _first_event_then(call, call.cancel)
        assert no_workers_left(), "a worker outlived the cancelled call"
        assert_resumable(root, reference)

        # 2. The deadline passes while the workers start or render (rendering here is fast, spawning is not).
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            for event in render.RenderDataset(request, timeout=2.0):
                pass
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert no_workers_left(), "a worker outlived the deadline"
        assert time.monotonic() - started < 40
        assert_resumable(root, reference)
    finally:
        channel.close()
        running.stop(grace=1.0)

    # 3. The server stops (SIGTERM of `flatland serve`) once the call's workers run.
    running, channel, meshgen, render = serve(LocalStore(root), workers=2)
    try:
        call = render.RenderDataset(render_pb2.RenderDatasetRequest(dataset=item(SLOW, "shapes")), timeout=300)
        outcome = {}
        reader = threading.Thread(target=lambda: outcome.update(events=_drain(call)))
        reader.start()
        deadline = time.monotonic() + 60
        while not _workers() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(_workers()) == 2
        running.stop(grace=0.5)
        reader.join(60)
        assert isinstance(outcome.get("events"), grpc.RpcError), outcome
        assert no_workers_left(), "a worker outlived the server"
    finally:
        channel.close()
        running.stop(grace=1.0)
    assert_resumable(root, reference)

    # The next call finishes the job: the same store as the uninterrupted one.
    running, channel, meshgen, render = serve(LocalStore(root), workers=2)
    try:
        events = list(render.RenderDataset(render_pb2.RenderDatasetRequest(dataset=item(SLOW, "shapes")), timeout=300))
        assert events[-1].progress.finished and events[-1].progress.skipped > 0  # what the stopped calls finished
    finally:
        channel.close()
        running.stop(grace=1.0)
    assert store_files(root) == store_files(reference)


def test_serve_validates_worker_and_call_limits(tmp_path):
    for field in ("workers", "max_workers", "max_streams", "max_spec_calls"):
        with pytest.raises(ValueError, match=f"{field}: must be >= 1"):
            start_server(None, LocalStore(tmp_path), port=0, metrics_port=None, **{field: 0})
