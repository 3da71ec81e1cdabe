"""Scene descriptions: reproducible per view, and the FlatWorld switches really freeze what they say."""

from __future__ import annotations

import json

import numpy as np

from services.common.spec.base import Uniform
from services.common.spec.render import IlluminationSpec, LightSpec, RenderSettings
from services.render.sampling import look_at, sample_view


def records(settings: RenderSettings, n: int = 12) -> list[dict]:
    return [sample_view(settings, root_seed=7, dataset_id="d-1", class_index=c, instance=i, view=v,
                        mesh_centre=np.array([0.1, 0.2, 0.3]), mesh_radius=1.3)
            for c in range(2) for i in range(2) for v in range(n // 4)]


def test_same_seed_same_record_and_views_differ():
    settings = RenderSettings()
    a, b = records(settings), records(settings)
    assert json.dumps(a) == json.dumps(b)
    poses = {json.dumps(r["camera"]["pose"]) for r in a}
    assert len(poses) == len(a)


def test_pose_off_gives_identical_cameras_but_lights_still_vary():
    settings = RenderSettings(pose_variation=False)
    rs = records(settings)
    assert all(r["camera"] == rs[0]["camera"] for r in rs)
    assert all(r["object"]["scale"] == 1.0 for r in rs)  # centre of the default scale jitter
    assert len({json.dumps(r["lights"]) for r in rs}) == len(rs)


def test_illumination_off_gives_identical_lights_but_cameras_still_vary():
    settings = RenderSettings(illumination_variation=False,
                              illumination=IlluminationSpec(lights=[LightSpec(kind="point"), LightSpec(kind="spot")]))
    rs = records(settings)
    assert all(r["lights"] == rs[0]["lights"] and r["ambient"] == rs[0]["ambient"] for r in rs)
    assert [light["kind"] for light in rs[0]["lights"]] == ["point", "spot"]
    assert len({json.dumps(r["camera"]["pose"]) for r in rs}) == len(rs)


def test_flatworld_everything_frozen():
    rs = records(RenderSettings(pose_variation=False, illumination_variation=False))
    assert all({k: v for k, v in r.items() if k not in ("class_index", "instance", "view", "seed")}
               == {k: v for k, v in rs[0].items() if k not in ("class_index", "instance", "view", "seed")} for r in rs)


def test_camera_pose_looks_at_origin_from_recorded_distance():
    for r in records(RenderSettings()):
        pose = np.asarray(r["camera"]["pose"])
        assert np.allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-9)
        position = pose[:3, 3]
        assert np.linalg.norm(position) == np.float64(r["camera"]["distance"]) or np.isclose(
            np.linalg.norm(position), r["camera"]["distance"])
        forward = -pose[:3, 2]
        assert np.allclose(forward, -position / np.linalg.norm(position))
        # object pose moves the mesh centre to the origin
        obj = np.asarray(r["object"]["pose"])
        assert np.allclose(obj @ np.array([0.1, 0.2, 0.3, 1.0]), [0, 0, 0, 1])


def test_look_at_roll_rotates_about_view_axis():
    a, b = look_at(np.array([0, 0, 3.0]), np.zeros(3), 0), look_at(np.array([0, 0, 3.0]), np.zeros(3), 90)
    assert np.allclose(a[:3, 2], b[:3, 2])
    assert np.allclose(b[:3, 0], a[:3, 1])


def test_default_lights_are_white_and_coloured_light_is_an_option():
    # ProcSynthDB is not coloured (Table 1): every default light is exactly white, on every view
    for r in records(RenderSettings()):
        assert r["lights"] and all(light["color"] == [1.0, 1.0, 1.0] for light in r["lights"])
    for r in records(RenderSettings(pose_variation=False, illumination_variation=False)):
        assert all(light["color"] == [1.0, 1.0, 1.0] for light in r["lights"])
    coloured = LightSpec(color_rgb=(Uniform(low=0.2, high=1.0),) * 3)
    rs = records(RenderSettings(illumination=IlluminationSpec(lights=[coloured])))
    colours = {tuple(light["color"]) for r in rs for light in r["lights"]}
    assert len(colours) == sum(len(r["lights"]) for r in rs)
    assert all(0.2 <= c <= 1.0 for colour in colours for c in colour)
    assert any(len(set(colour)) == 3 for colour in colours)  # channels differ: really coloured
