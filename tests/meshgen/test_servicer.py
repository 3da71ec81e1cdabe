"""The Meshgen gRPC service on a real server on loopback."""

from __future__ import annotations

import io
import json

import grpc
import pytest
import trimesh
import yaml

from flatland.v1 import common_pb2, meshgen_pb2, meshgen_pb2_grpc
from services.common.manifest import read_manifest
from services.common.spec.experiment import parse_spec
from services.common.store import LocalStore

PROC = {"family": "procsynth", "segments_range": {"low": 8, "high": 10}, "w": 2}
SPEC = {"name": "grpc-test", "seed": 5, "datasets": [{"name": "shapes", "family": PROC, "classes": 3}]}


@pytest.fixture
def stub(tmp_path, serve_stage):
    store = LocalStore(tmp_path / "store")
    return meshgen_pb2_grpc.MeshgenStub(serve_stage("meshgen", store)), store


def test_generate_mesh_returns_glb_and_stats(stub):
    client, _ = stub
    request = meshgen_pb2.GenerateMeshRequest(family="procsynth", params_json=json.dumps(PROC), seed=5, class_index=2, instance=1)
    reply = client.GenerateMesh(request, timeout=60)
    assert reply.content_type == "model/gltf-binary" and reply.relative_key == "00002/1.glb"
    mesh = trimesh.load(io.BytesIO(reply.data), file_type="glb", force="mesh")
    stats = json.loads(reply.stats_json)
    assert len(mesh.faces) == stats["faces"] and stats["stretch_factor"] == 1.5
    assert client.GenerateMesh(request, timeout=60).data == reply.data  # deterministic


def test_generate_mesh_fractal_json(stub):
    client, _ = stub
    params = {"search_points": 10000, "search_size": 96}
    reply = client.GenerateMesh(meshgen_pb2.GenerateMeshRequest(family="fractal2d", params_json=json.dumps(params), seed=1), timeout=60)
    assert reply.content_type == "application/json"
    assert json.loads(reply.data)["filling_rate"] >= 0.2


@pytest.mark.parametrize(
    "request_fields, field",
    [
        ({"family": "procsynth", "params_json": '{"v": 0}'}, "v"),
        ({"family": "procsynth", "params_json": '{"max_size": -3}'}, "max_size"),
        ({"family": "fractal2d", "params_json": '{"filling_rate": 2}'}, "filling_rate"),
        ({"family": "blobs"}, "family"),
        ({"family": "procsynth", "params_json": "{nope"}, "params_json"),
        ({"family": "procsynth", "class_index": -1}, "class_index"),
    ],
)
def test_bad_requests_are_invalid_argument_naming_the_field(stub, request_fields, field):
    client, _ = stub
    with pytest.raises(grpc.RpcError) as info:
        client.GenerateMesh(meshgen_pb2.GenerateMeshRequest(**request_fields), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in info.value.details()
    # the server is still alive after a bad request
    ok = client.GenerateMesh(meshgen_pb2.GenerateMeshRequest(family="procsynth", params_json=json.dumps(PROC)), timeout=60)
    assert ok.data[:4] == b"glTF"


def test_generate_dataset_streams_progress_and_resumes(stub):
    client, store = stub
    request = meshgen_pb2.GenerateDatasetRequest(
        dataset=common_pb2.ExperimentItem(spec=common_pb2.SpecText(text=yaml.safe_dump(SPEC)), name="shapes")
    )
    events = list(client.GenerateDataset(request, timeout=120))
    assert [e.progress.done for e in events] == [1, 2, 3, 3] and events[-1].progress.finished
    assert all(len(e.progress.outputs) == 3 and e.class_index == i for i, e in enumerate(events[:-1]))
    dataset_id = parse_spec(SPEC).dataset_id("shapes")
    assert events[0].dataset_id == dataset_id
    manifest = read_manifest(store, f"meshes/{dataset_id}/manifest.json")
    assert len(manifest.entries) == 9
    again = list(client.GenerateDataset(request, timeout=60))
    assert again[-1].progress.skipped == 3


def test_generate_dataset_bad_spec_and_unknown_dataset(stub):
    client, _ = stub
    bad = dict(SPEC, datasets=[{"name": "shapes", "family": dict(PROC, v=0), "classes": 3}])
    for spec, name, field in [(bad, "shapes", "datasets[0].family.procsynth.v"), (SPEC, "nope", "dataset.name")]:
        request = meshgen_pb2.GenerateDatasetRequest(
            dataset=common_pb2.ExperimentItem(spec=common_pb2.SpecText(text=yaml.safe_dump(spec)), name=name)
        )
        with pytest.raises(grpc.RpcError) as info:
            list(client.GenerateDataset(request, timeout=30))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in info.value.details()


FIT = {"level": 1, "image_size": 24, "views": 6, "held_out_views": 2, "iterations": 12, "log_every": 4,
       "views_per_iteration": 0}


def test_fit_mesh_streams_losses_and_returns_mesh_and_metrics(stub):
    client, store = stub
    target = trimesh.creation.box(extents=[1.5, 0.8, 0.8]).export(file_type="glb")
    request = meshgen_pb2.FitMeshRequest(mesh=target, params_json=json.dumps(FIT), store_outputs=True)
    events = list(client.FitMesh(request, timeout=120))
    steps, final = events[:-1], events[-1]
    assert [e.progress.done for e in steps] == [1, 4, 8, 12] and all(e.progress.total == 12 for e in steps)
    assert all("silhouette" in json.loads(e.losses_json) for e in steps)
    assert final.progress.finished and final.fit_id.startswith("fit-") and final.fit_id == steps[0].fit_id
    mesh = trimesh.load(io.BytesIO(final.mesh_glb), file_type="glb", force="mesh")
    assert len(mesh.vertices) == 42  # level-1 ico-sphere
    metrics = json.loads(final.metrics_json)
    assert 0 < metrics["held_out_iou"] <= 1 and metrics["chamfer"] > 0 and "timing" in metrics
    keys = sorted(ref.key for ref in final.progress.outputs)
    assert keys == sorted(f"fits/{final.fit_id}/{n}" for n in ("losses.jsonl", "losses.png", "mesh.glb", "metrics.json"))
    assert store.get_json(f"fits/{final.fit_id}/metrics.json")["iterations"] == 12


@pytest.mark.parametrize("fields, text", [
    ({}, "either a mesh or masks"),
    ({"mesh": b"garbage"}, "mesh: could not read"),
    ({"mesh": b"x", "params_json": '{"level": 12}'}, "params.level"),
    ({"masks_png": [b"x"], "records_json": "[{}]"}, "masks_png[0]"),
])
def test_fit_mesh_bad_requests_are_invalid_argument(stub, fields, text):
    client, _ = stub
    with pytest.raises(grpc.RpcError) as info:
        list(client.FitMesh(meshgen_pb2.FitMeshRequest(**fields), timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert text in info.value.details()
