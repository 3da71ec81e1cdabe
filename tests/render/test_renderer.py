"""Geometry of rendered views: depth, silhouettes, re-rendering, bad meshes, the shader cache."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh

from services.common.spec.base import Fixed
from services.common.spec.render import CameraSpec, RenderSettings
from services.render.renderers import gl
from services.render.renderers.gl import (DegenerateMeshError, RecordError, RenderBackendError, SceneRenderer,
                                          mesh_frame, select_platform)
from services.render.sampling import sample_view
from services.render.views import get_renderer, render_record

SIZE = 64


def front_view_settings(distance: float) -> RenderSettings:
    """Camera on the +z axis looking at the origin, no jitter."""
    camera = CameraSpec(azimuth_deg=Fixed(value=0), elevation_deg=Fixed(value=0), roll_deg=Fixed(value=0),
                        fov_deg=Fixed(value=40), distance=Fixed(value=distance))
    return RenderSettings(image_size=SIZE, camera=camera, scale_jitter=Fixed(value=1.0))


def render(mesh, settings, view=0):
    centre, radius = mesh_frame(mesh)
    record = sample_view(settings, root_seed=0, dataset_id="geom", class_index=0, instance=0, view=view,
                         mesh_centre=centre, mesh_radius=radius)
    renderer = get_renderer(settings.image_size)
    renderer.set_mesh(mesh, record["material"])
    return record, renderer.render(record)


def test_cube_face_depth_is_camera_distance_minus_half_side():
    distance = 4.0
    _, view = render(trimesh.creation.box(extents=(1, 1, 1)), front_view_settings(distance))
    centre = view.depth[SIZE // 2 - 2:SIZE // 2 + 2, SIZE // 2 - 2:SIZE // 2 + 2]
    np.testing.assert_allclose(centre, distance - 0.5, rtol=1e-4)
    # the face is a square: its projected side is f * 1 / (d - 0.5) pixels
    f = 0.5 * SIZE / np.tan(np.radians(20))
    expected_side = f / (distance - 0.5)
    assert abs(view.mask[SIZE // 2].sum() - expected_side) <= 2
    assert abs(view.mask[:, SIZE // 2].sum() - expected_side) <= 2


def test_sphere_centre_depth_is_distance_minus_radius():
    _, view = render(trimesh.creation.icosphere(subdivisions=5, radius=1.0), front_view_settings(5.0))
    assert view.depth[SIZE // 2, SIZE // 2] == pytest.approx(4.0, abs=5e-3)
    # depth grows away from the centre on a sphere
    assert view.depth[SIZE // 2, SIZE // 2 + 8] > view.depth[SIZE // 2, SIZE // 2]


def test_mask_is_exactly_where_depth_is_finite_and_background_is_infinite():
    settings = RenderSettings(image_size=SIZE)
    for view_index in range(3):
        _, view = render(trimesh.creation.torus(major_radius=1.0, minor_radius=0.3), settings, view_index)
        assert np.array_equal(view.mask, np.isfinite(view.depth))
        assert 0.02 < view.mask.mean() < 0.9
        assert np.all(np.isinf(view.depth[~view.mask]))
        assert np.all(view.rgb[~view.mask] == 0)  # black plain background
        seg = view.segmentation(4)
        assert set(np.unique(seg)) == {0, 4} and np.array_equal(seg == 4, view.mask)


def test_auto_distance_keeps_object_inside_the_frame():
    settings = RenderSettings(image_size=SIZE)
    for view_index in range(5):
        _, view = render(trimesh.creation.box(extents=(2, 1, 0.5)), settings, view_index)
        border = np.concatenate([view.mask[0], view.mask[-1], view.mask[:, 0], view.mask[:, -1]])
        assert not border.any()


def test_record_re_renders_to_identical_images():
    mesh = trimesh.creation.cone(radius=0.7, height=1.5)
    settings = RenderSettings(image_size=SIZE)
    record, first = render(mesh, settings, 3)
    get_renderer(SIZE).set_mesh(trimesh.creation.box(), record["material"])  # something else in between
    again = render_record(record, mesh)
    assert np.array_equal(first.rgb, again.rgb)
    assert np.array_equal(first.depth, again.depth)


def _set(path: str, value):
    """A function that sets ``record[path]`` (dots and integer indices) to ``value``."""
    def apply(record):
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        for part in parents:
            record = record[part]
        record[last] = value
    return apply


BAD_RECORDS = [
    (_set("material.metallic", 2), "record.material.metallic"),
    (_set("lights.0.pose", [[1, 0, 0], [0, 1, 0], [0, 0, 1]]), "record.lights[0].pose"),
    (_set("lights.0.pose.1.3", float("nan")), "record.lights[0].pose[1][3]"),
    (_set("lights.0.kind", "laser"), "record.lights[0].kind"),
    (_set("camera.zfar", 0.001), "record.camera"),
    (_set("object.pose", "identity"), "record.object.pose"),
    (_set("ambient", -1), "record.ambient"),
]


@pytest.mark.parametrize("break_it, field", BAD_RECORDS, ids=[f for _, f in BAD_RECORDS])
def test_a_bad_record_fails_naming_its_field_and_does_not_poison_the_renderer(break_it, field):
    size = SIZE + 8  # a renderer of its own, so earlier tests cannot hide a poisoned scene
    mesh = trimesh.creation.cone(radius=0.7, height=1.5)
    centre, radius = mesh_frame(mesh)
    good = sample_view(RenderSettings(image_size=size), root_seed=1, dataset_id="poison", class_index=0, instance=0,
                       view=2, mesh_centre=centre, mesh_radius=radius)
    renderer = get_renderer(size)
    renderer.set_mesh(mesh, good["material"])
    first = renderer.render(good)
    bad = copy.deepcopy(good)
    break_it(bad)
    with pytest.raises(RecordError, match=re.escape(field)):
        renderer.set_mesh(trimesh.creation.box(), bad["material"])
        renderer.render(bad)
    renderer.set_mesh(mesh, good["material"])
    again = renderer.render(good)
    with SceneRenderer(size) as fresh:
        fresh.set_mesh(mesh, good["material"])
        reference = fresh.render(good)
    for view in (first, again):
        assert np.array_equal(view.rgb, reference.rgb) and np.array_equal(view.depth, reference.depth)


def test_scene_updates_are_atomic_even_when_pyrender_refuses(monkeypatch):
    """Build, then swap: a failure inside pyrender (validation bypassed) leaves the scene usable."""
    size = SIZE + 8
    mesh = trimesh.creation.cone(radius=0.7, height=1.5)
    centre, radius = mesh_frame(mesh)
    good = sample_view(RenderSettings(image_size=size), root_seed=1, dataset_id="poison", class_index=0, instance=0,
                       view=2, mesh_centre=centre, mesh_radius=radius)
    renderer = get_renderer(size)
    renderer.set_mesh(mesh, good["material"])
    first = renderer.render(good)
    monkeypatch.setattr(gl, "validate_record", lambda record: None)
    monkeypatch.setattr(gl, "validate_material", lambda material: material)
    bad_material = {**good["material"], "metallic": 2.0}
    with pytest.raises(ValueError, match="Metallic"):
        renderer.set_mesh(trimesh.creation.box(), bad_material)
    bad_light = copy.deepcopy(good)
    bad_light["lights"].append({**bad_light["lights"][0], "pose": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]})
    with pytest.raises(ValueError):
        renderer.render(bad_light)
    assert np.array_equal(renderer.render(good).rgb, first.rgb)  # the cone, not the box; one light set
    renderer.set_mesh(mesh, good["material"])
    assert np.array_equal(renderer.render(good).rgb, first.rgb)


def test_vertex_colours_are_used():
    mesh = trimesh.creation.icosphere(subdivisions=2)
    mesh.visual.vertex_colors = np.tile([255, 0, 0, 255], (len(mesh.vertices), 1)).astype(np.uint8)
    _, view = render(mesh, front_view_settings(4.0))
    rgb = view.rgb[view.mask].astype(int)
    assert rgb[:, 0].mean() > 5 * max(rgb[:, 1].mean(), 1)


@pytest.mark.parametrize("mesh, message", [
    (trimesh.Trimesh(vertices=np.zeros((3, 3)), faces=np.zeros((0, 3), dtype=int), process=False), "no faces"),
    (trimesh.Trimesh(vertices=[[0, 0, 0], [1, 0, 0], [np.nan, 1, 0]], faces=[[0, 1, 2]], process=False), "NaN"),
])
def test_degenerate_meshes_are_refused_clearly(mesh, message):
    with pytest.raises(DegenerateMeshError, match=message):
        get_renderer(SIZE).set_mesh(mesh, RenderSettings().material.model_dump())


def test_shader_cache_key_is_stable_and_cache_stops_growing():
    from OpenGL import contextdata

    settings = RenderSettings(image_size=SIZE)
    render(trimesh.creation.box(), settings, 0)
    renderer = get_renderer(SIZE)
    renderer._offscreen._platform.make_current()
    raw_a, raw_b = contextdata.getContext(), contextdata.getContext()
    cache = renderer.shader_cache
    key_a = cache.program_key("mesh.vert", "mesh.frag")
    assert key_a == cache.program_key("mesh.vert", "mesh.frag")
    assert raw_a != raw_b or key_a[0] is not None  # the raw handles may differ; our key does not
    warm = len(cache)
    for view_index in range(20):
        render(trimesh.creation.box(), settings, view_index)
    assert len(cache) == warm


def test_platform_cannot_be_switched_after_opengl_import():
    get_renderer(SIZE)
    other = "egl" if select_platform("auto") == "osmesa" else "osmesa"
    with pytest.raises(RenderBackendError, match="already imported"):
        select_platform(other)
    with pytest.raises(RenderBackendError, match="must be one of"):
        select_platform("vulkan")


def test_phong_and_pbr_shading_agree_on_silhouette_and_roughly_on_brightness():
    mesh = trimesh.creation.icosphere(subdivisions=3)
    views = {}
    for shading in ("phong", "pbr"):
        settings = front_view_settings(4.0).model_copy(deep=True)
        settings.material.shading = shading
        _, views[shading] = render(mesh, settings)
    phong, pbr = views["phong"], views["pbr"]
    assert np.array_equal(phong.mask, pbr.mask) and np.array_equal(phong.depth, pbr.depth)
    a, b = phong.rgb[phong.mask].mean(), pbr.rgb[pbr.mask].mean()
    assert abs(a - b) < 0.25 * b
    names = {name for key in get_renderer(SIZE).shader_cache._program_cache for name, _ in key[1:]}
    assert {"phong.frag", "mesh.frag"} <= names


def _fresh_process(code: str, env: dict) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "PYOPENGL_PLATFORM"} | env
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=environment, cwd=Path(__file__).resolve().parents[2])


def test_egl_says_when_it_fell_back_to_software():
    code = ("import logging; logging.basicConfig(level=logging.INFO)\n"
            "from services.render.renderers.gl import SceneRenderer, RenderBackendError\n"
            "try:\n    r = SceneRenderer(16, 'egl'); print('SOFTWARE' if r.software else 'HARDWARE', r.gl_renderer)\n"
            "except RenderBackendError as exc:\n    print('REFUSED', exc)\n")
    result = _fresh_process(code, {})
    assert result.returncode == 0, result.stderr
    if result.stdout.startswith("SOFTWARE"):
        assert "EGL is rendering in software" in result.stderr
    elif result.stdout.startswith("REFUSED"):
        assert "PYOPENGL_PLATFORM=egl" in result.stdout
    else:
        assert "software" not in result.stderr


def test_unstartable_platform_is_a_clear_error():
    code = ("from services.render.renderers.gl import SceneRenderer\n"
            "SceneRenderer(16, 'egl')\n")
    result = _fresh_process(code, {"EGL_DEVICE_ID": "999"})
    assert result.returncode != 0
    assert "RenderBackendError" in result.stderr and "could not start OpenGL with PYOPENGL_PLATFORM=egl" in result.stderr


def test_every_light_kind_lights_the_object_under_phong():
    from services.common.spec.render import IlluminationSpec, LightSpec

    mesh = trimesh.creation.icosphere(subdivisions=3)
    front = dict(azimuth_deg=Fixed(value=0), elevation_deg=Fixed(value=0))  # the camera's side
    means = {}
    for kind in ("directional", "point", "spot", None):
        settings = front_view_settings(4.0).model_copy(deep=True)
        lights = [LightSpec(kind=kind or "directional", intensity=Fixed(value=2.0 if kind else 0.0), **front)]
        settings.illumination = IlluminationSpec(count=Fixed(value=1), lights=lights, ambient=Fixed(value=0.1))
        record, view = render(mesh, settings)
        means[kind] = view.rgb[view.mask].mean()
    for kind in ("directional", "point", "spot"):
        assert means[kind] > means[None] + 40, means
    keys = get_renderer(SIZE).shader_cache._program_cache
    counts = {dict(key[1:]).get("N_POINT_LIGHTS") for key in keys}
    assert {0, 1} <= counts  # one program per light configuration


def test_noise_background_fills_only_the_background_and_re_renders():
    from services.common.spec.render import BackgroundSpec

    settings = RenderSettings(image_size=SIZE, background=BackgroundSpec(kind="noise", noise_scale=4.0))
    mesh = trimesh.creation.box()
    record, view = render(mesh, settings, 2)
    background = view.rgb[~view.mask]
    assert background.std() > 5 and background.max() > 100  # a texture, not a plain colour
    other, _ = render(mesh, settings, 3)
    assert other["background"]["noise_seed"] != record["background"]["noise_seed"]
    again = render_record(record, mesh)
    assert np.array_equal(again.rgb, view.rgb)


def test_scale_jitter_changes_the_apparent_size_with_auto_distance():
    """With distance 'auto' the camera fits the unscaled object: the silhouette area grows as scale²."""
    from services.common.spec.base import Uniform

    camera = CameraSpec(elevation_deg=Fixed(value=0), roll_deg=Fixed(value=0))  # auto distance, azimuth varies
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    records, areas = [], []
    for settings in (RenderSettings(image_size=SIZE, camera=camera),  # the default jitter, 0.9..1.1
                     RenderSettings(image_size=SIZE, camera=camera, scale_jitter=Uniform(low=0.6, high=1.1))):
        for view_index in range(6):
            record, view = render(sphere, settings, view_index)
            records.append(record)
            areas.append(view.mask.sum())
            assert not np.concatenate([view.mask[0], view.mask[-1], view.mask[:, 0], view.mask[:, -1]]).any()
    scales = np.array([r["object"]["scale"] for r in records])
    distances = {round(r["camera"]["distance"], 9) for r in records}
    assert len(distances) == 1  # the camera does not follow the scale
    areas = np.array(areas, dtype=float)
    assert areas.max() / areas.min() > 1.5
    # a sphere looks the same from every azimuth: area / scale² is constant up to rasterisation
    np.testing.assert_allclose(areas / scales**2, np.median(areas / scales**2), rtol=0.08)
    assert np.corrcoef(scales, areas)[0, 1] > 0.99
