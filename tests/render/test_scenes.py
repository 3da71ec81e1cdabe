"""Noise textures and abstract scenes: spectra follow the scale, label maps follow the objects."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.seeds import rng_from_seed
from services.common.spec.render import NoiseSceneParams
from services.render.renderers.noise import noise_image, radial_power_centroid
from services.render.renderers.scenes import dominant_class, draw_scene, ray_cast_ellipsoid, sample_scene


@pytest.mark.parametrize("kind", ["perlin", "sparse_convolution"])
def test_noise_spectrum_is_coarser_at_smaller_scale(kind):
    centroids = [np.mean([radial_power_centroid(noise_image(128, scale, rng_from_seed(s), kind)) for s in range(3)])
                 for scale in (2, 6, 18)]
    assert centroids[0] < centroids[1] < centroids[2]
    # the dominant frequency tracks the scale (features per side) within a factor of ~2
    assert 6 / 2.5 < centroids[1] < 6 * 2.5


def test_noise_is_seeded_and_normalised():
    a = noise_image(64, 4, rng_from_seed(1))
    assert np.array_equal(a, noise_image(64, 4, rng_from_seed(1)))
    assert not np.array_equal(a, noise_image(64, 4, rng_from_seed(2)))
    assert a.min() == 0 and a.max() == 1
    with pytest.raises(ValueError, match="scale"):
        noise_image(64, 0, rng_from_seed(1))


def one_object_scene(obj_overrides: list[dict], size: int = 96) -> dict:
    record = sample_scene(NoiseSceneParams(image_size=size, objects_range=(len(obj_overrides), len(obj_overrides))),
                          5, root_seed=0, dataset_id="n", scene=0)
    for obj, override in zip(record["objects"], obj_overrides):
        obj.update(override)
    return record


def test_label_map_is_the_projected_ellipse():
    size = 96
    record = one_object_scene([{"class_index": 3, "centre": [0.5, 0.5, 0.5], "semi_axes": [0.3, 0.15, 0.1],
                                "rotation": np.eye(3).tolist()}], size)
    _, labels = draw_scene(record)
    coords = (np.arange(size) + 0.5) / size
    x, y = np.meshgrid(coords, coords)
    inside = ((x - 0.5) / 0.3) ** 2 + ((y - 0.5) / 0.15) ** 2 <= 1
    assert set(np.unique(labels)) == {0, 4}
    assert np.array_equal(labels == 4, inside)
    assert dominant_class(labels) == 3


def test_nearer_object_wins_the_pixels_it_covers():
    far = {"class_index": 0, "centre": [0.5, 0.5, 0.0], "semi_axes": [0.3, 0.3, 0.3], "rotation": np.eye(3).tolist()}
    near = {"class_index": 1, "centre": [0.5, 0.5, 0.9], "semi_axes": [0.1, 0.1, 0.1], "rotation": np.eye(3).tolist()}
    for order in ([far, near], [near, far]):
        _, labels = draw_scene(one_object_scene(order))
        assert labels[48, 48] == 2 and labels[48, 48 + 20] == 1


def test_ellipsoid_normals_face_the_camera():
    obj = {"centre": [0.5, 0.5, 0.5], "semi_axes": [0.2, 0.1, 0.3], "rotation": np.eye(3).tolist()}
    z, normal = ray_cast_ellipsoid(obj, 64)
    hit = np.isfinite(z)
    assert np.all(normal[hit][:, 2] >= -1e-9)
    assert np.allclose(np.linalg.norm(normal[hit], axis=1), 1)
    d = (32.5 / 64) - 0.5  # pixel centre offset from the ellipsoid's axis
    assert z[32, 32] == pytest.approx(0.5 + 0.3 * np.sqrt(1 - (d / 0.2) ** 2 - (d / 0.1) ** 2), abs=1e-9)


def test_objects_follow_their_class_means():
    params = NoiseSceneParams(image_size=32, objects_range=(20, 20), hue_std=0.01, elongation_std=0.01)
    objects = [o for s in range(10) for o in sample_scene(params, 3, root_seed=1, dataset_id="n", scene=s)["objects"]]
    by_class = {c: [o for o in objects if o["class_index"] == c] for c in range(3)}
    hues = [np.median([o["hue"] for o in objs]) for objs in by_class.values()]
    for objs, hue in zip(by_class.values(), hues):
        spread = np.abs(((np.array([o["hue"] for o in objs]) - hue + 0.5) % 1.0) - 0.5)
        assert spread.max() < 0.06
        assert all(o["elongation"] >= 1 for o in objs)
