"""The Render gRPC service on a real server on loopback."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
import trimesh
import yaml

from flatland.v1 import common_pb2, render_pb2, render_pb2_grpc
from services.common.manifest import read_manifest
from services.render.views import decode_npy, decode_png

from .meshdata import glb_bytes, primitive_meshes, tiny_spec, write_meshes


@pytest.fixture
def stub(store, serve_stage):
    return render_pb2_grpc.RenderStub(serve_stage("render", store)), store


def test_render_images_from_glb_and_re_render_records(stub):
    client, _ = stub
    glb = glb_bytes(trimesh.creation.box())
    reply = client.RenderImages(render_pb2.RenderImagesRequest(
        glb=glb, settings_json=json.dumps({"image_size": 40}), count=3, seed=4, include_depth=True))
    assert len(reply.images) == 3 and "OpenGL" in reply.gl_renderer
    first = reply.images[0]
    rgb, depth, mask = decode_png(first.rgb_png), decode_npy(first.depth_npy), decode_png(first.mask_png)
    assert rgb.shape == (40, 40, 3) and np.array_equal(mask == 255, np.isfinite(depth))
    again = client.RenderImages(render_pb2.RenderImagesRequest(glb=glb, records_json=[first.record_json]))
    assert again.images[0].rgb_png == first.rgb_png


@pytest.mark.parametrize("fields, code, words", [
    ({"mesh_key": "meshes/nope/00000/0.glb", "count": 1}, grpc.StatusCode.NOT_FOUND, "nope"),
    ({"glb": b"x", "count": 1, "settings_json": json.dumps({"image_size": 2048})}, grpc.StatusCode.RESOURCE_EXHAUSTED, "image_size"),
    ({"glb": b"x", "count": 10_000}, grpc.StatusCode.RESOURCE_EXHAUSTED, "count"),
    ({"glb": b"x", "count": 1, "settings_json": json.dumps({"image_size": 3})}, grpc.StatusCode.INVALID_ARGUMENT, "image_size"),
    ({"glb": b"not a mesh", "count": 1}, grpc.StatusCode.INVALID_ARGUMENT, "GLB"),
    ({"glb": b"x", "count": 1, "settings_json": json.dumps({"backend": "vulkan"})}, grpc.StatusCode.INVALID_ARGUMENT, "backend"),
])
def test_bad_requests_map_to_status_codes(stub, fields, code, words):
    client, _ = stub
    with pytest.raises(grpc.RpcError) as info:
        client.RenderImages(render_pb2.RenderImagesRequest(**fields))
    assert info.value.code() == code and words in info.value.details()
    # the server survives
    ok = client.RenderImages(render_pb2.RenderImagesRequest(glb=glb_bytes(trimesh.creation.box()), count=1,
                                                            settings_json='{"image_size": 32}'))
    assert len(ok.images) == 1


@pytest.mark.parametrize("field, value", [("metallic", 2), ("roughness", "rough")])
def test_a_bad_record_is_invalid_argument_and_later_renders_are_unharmed(stub, field, value):
    """good -> bad -> good at one image size: the bad one names its field, the good ones match a fresh render."""
    client, _ = stub
    glb = glb_bytes(trimesh.creation.box())
    first = client.RenderImages(render_pb2.RenderImagesRequest(
        glb=glb, settings_json=json.dumps({"image_size": 48}), count=1, seed=9)).images[0]
    bad = json.loads(first.record_json)
    bad["material"][field] = value
    bad_light = json.loads(first.record_json)
    bad_light["lights"][0]["pose"] = [[1, 0, 0, 0]]
    for record, path in ((bad, f"records_json[1].material.{field}"), (bad_light, "records_json[1].lights[0].pose")):
        with pytest.raises(grpc.RpcError) as info:
            client.RenderImages(render_pb2.RenderImagesRequest(glb=glb, records_json=[first.record_json,
                                                                                      json.dumps(record)]))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and path in info.value.details()
    again = client.RenderImages(render_pb2.RenderImagesRequest(glb=glb, records_json=[first.record_json]))
    assert again.images[0].rgb_png == first.rgb_png


def test_degenerate_mesh_is_invalid_argument(stub):
    client, _ = stub
    mesh = trimesh.creation.box()
    mesh.vertices[3] = np.nan
    with pytest.raises(grpc.RpcError) as info:
        client.RenderImages(render_pb2.RenderImagesRequest(glb=glb_bytes(mesh), count=1))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "NaN" in info.value.details()


def test_render_dataset_streams_progress_and_resumes(stub):
    client, store = stub
    spec = tiny_spec()
    prims = primitive_meshes()
    write_meshes(store, spec, "shapes", {(c, i): prims[2 * c + i] for c in range(2) for i in range(2)})
    text = yaml.safe_dump(spec.model_dump(mode="json"))
    request = render_pb2.RenderDatasetRequest(dataset=common_pb2.ExperimentItem(spec=common_pb2.SpecText(text=text),
                                                                                 name="shapes"))
    events = list(client.RenderDataset(request))
    assert [e.progress.done for e in events] == [1, 2, 3, 4, 4] and events[-1].progress.finished
    manifest = read_manifest(store, f"datasets/{events[-1].dataset_id}/manifest.json")
    assert len(manifest.entries) == 4
    again = list(client.RenderDataset(request))
    assert again[-1].progress.skipped == 4
    bad = render_pb2.RenderDatasetRequest(dataset=common_pb2.ExperimentItem(spec=common_pb2.SpecText(text=text),
                                                                             name="missing"))
    with pytest.raises(grpc.RpcError) as info:
        list(client.RenderDataset(bad))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "missing" in info.value.details()


def test_other_gl_platform_than_the_servers_is_failed_precondition(stub):
    from services.render.renderers.gl import select_platform

    client, _ = stub
    client.RenderImages(render_pb2.RenderImagesRequest(glb=glb_bytes(trimesh.creation.box()), count=1,
                                                       settings_json='{"image_size": 32}'))
    other = "egl" if select_platform("auto") == "osmesa" else "osmesa"
    with pytest.raises(grpc.RpcError) as info:
        client.RenderImages(render_pb2.RenderImagesRequest(glb=glb_bytes(trimesh.creation.box()), count=1,
                                                           settings_json=json.dumps({"image_size": 32, "backend": other})))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "already imported" in info.value.details()
