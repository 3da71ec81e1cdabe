"""Noise textures and abstract scenes: spectra follow the scale, label maps follow the objects."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from services.common.seeds import rng_from_seed
from services.common.spec.render import NoiseSceneParams
from services.render.renderers.noise import noise_image, radial_power_centroid
from services.render.renderers.scenes import (dominant_class, draw_scene, elongation_axes, hsl_colour,
                                            ray_cast_ellipsoid, sample_scene)


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


def _objects(params: NoiseSceneParams, scenes: int, classes: int = 3) -> list[dict]:
    return [o for s in range(scenes) for o in sample_scene(params, classes, root_seed=1, dataset_id="n", scene=s)["objects"]]


def test_objects_follow_the_published_class_priors():
    params = NoiseSceneParams(image_size=32, objects_range=(20, 20))
    objects = _objects(params, 400)  # 8,000 objects, ~2,700 per class
    assert [(p.hue, p.rho, p.noise_scale) for p in params.class_priors] == [(150, 0.55, 5), (250, 0.45, 17.5), (20, 0.5, 30)]
    for cls, prior in enumerate(params.class_priors):
        mine = [o for o in objects if o["class_index"] == cls]
        assert len(mine) > 2400
        # hue: N(h_k, 50^2) mod 360 (deviations beyond +-180 degrees, 3.6 sd, are negligible)
        deviation = (np.array([o["hue"] for o in mine]) - prior.hue + 180.0) % 360.0 - 180.0
        assert all(0 <= o["hue"] < 360 for o in mine)
        assert stats.kstest(deviation, "norm", args=(0, 50)).pvalue > 1e-3
        # rho: N(rho_k, 0.05^2) clamped to [0, 1] (the clamp is 9 sd away)
        rho = np.array([o["rho"] for o in mine])
        assert stats.kstest(rho, "norm", args=(prior.rho, 0.05)).pvalue > 1e-3
        # r: N(r_k, 5^2) clamped to > 1: compare with the clamped normal's distribution function
        r = np.array([o["noise_scale"] for o in mine])
        assert r.min() > 1
        clamped = stats.norm(prior.noise_scale, 5).cdf(1.0)
        assert np.mean(r <= 1 + 1e-5) == pytest.approx(clamped, abs=4 * np.sqrt(clamped * (1 - clamped) / len(r)) + 1e-3)
        above = r[r > 1 + 1e-5]
        truncated = stats.truncnorm((1 - prior.noise_scale) / 5, np.inf, loc=prior.noise_scale, scale=5)
        assert stats.kstest(above, truncated.cdf).pvalue > 1e-3
        # colour: HSL(h, 1, 0.5)
        assert np.allclose([o["colour"] for o in mine[:50]], [hsl_colour(o["hue"]) for o in mine[:50]])
    # the per-object parameters are uniform over their spec ranges
    for field, (low, high) in (("scale", (0.1, 0.7)), ("kd", (0.25, 0.75)), ("ks", (0.0, 0.5)), ("shininess", (10, 100))):
        values = np.array([o[field] for o in objects])
        assert stats.kstest(values, "uniform", args=(low, high - low)).pvalue > 1e-3, field
    xy = np.array([o["position"][:2] for o in objects]).ravel()
    assert stats.kstest(xy, "uniform", args=(-1.5, 3.0)).pvalue > 1e-3
    # scenes: N ~ U{1..20}, background scale r_bg ~ U(1, 20)
    records = [sample_scene(NoiseSceneParams(image_size=32), 3, root_seed=2, dataset_id="n", scene=s) for s in range(400)]
    counts = np.bincount([len(r["objects"]) for r in records], minlength=21)
    assert counts[0] == 0 and len(counts) == 21 and stats.chisquare(counts[1:]).pvalue > 1e-3
    backgrounds = np.array([r["background"]["noise_scale"] for r in records])
    assert stats.kstest(backgrounds, "uniform", args=(1, 19)).pvalue > 1e-3


def test_classes_beyond_the_listed_priors_draw_seeded_means():
    params = NoiseSceneParams(image_size=32, objects_range=(20, 20), hue_std=0, rho_std=0, noise_scale_std=0)
    objects = _objects(params, 20, classes=5)
    for cls in (3, 4):
        mine = [o for o in objects if o["class_index"] == cls]
        assert len({(o["hue"], o["rho"], o["noise_scale"]) for o in mine}) == 1  # no spread: the class mean
    assert _objects(params, 20, classes=5) == objects  # seeded


@pytest.mark.parametrize("rho", [0.0, 0.2, 0.45, 0.5, 0.55, 0.9, 1.0])
def test_elongation_is_axis_parallel_and_normalised(rho):
    sx, sy = elongation_axes(rho)
    assert sx**2 + sy**2 == pytest.approx(2.0)
    assert sx * (1 - rho) == pytest.approx(sy * rho)  # sx : sy = rho : 1 - rho
    if rho == 0.5:
        assert (sx, sy) == pytest.approx((1.0, 1.0))  # a sphere
    # the scene's ellipsoids are built with it, axis-parallel, in image units of the [-2, 2] view
    params = NoiseSceneParams(image_size=32, objects_range=(5, 5), rho_std=0)
    for obj in _objects(params, 2):
        ex, ey = elongation_axes(obj["rho"])
        assert obj["semi_axes"] == pytest.approx([obj["scale"] * ex / 4, obj["scale"] * ey / 4, obj["scale"] / 4])
        assert obj["rotation"] == np.eye(3).tolist()


def test_hsl_colours_and_a_black_and_white_background():
    assert hsl_colour(0) == pytest.approx([1, 0, 0]) and hsl_colour(120) == pytest.approx([0, 1, 0])
    assert hsl_colour(240) == pytest.approx([0, 0, 1]) and hsl_colour(60) == pytest.approx([1, 1, 0])
    record = sample_scene(NoiseSceneParams(image_size=64, objects_range=(3, 3)), 3, root_seed=0, dataset_id="n", scene=1)
    rgb, labels = draw_scene(record)
    background = rgb[labels == 0].astype(int)
    assert (labels == 0).any() and np.array_equal(background[:, 0], background[:, 1])
    assert np.array_equal(background[:, 1], background[:, 2]) and background.std() > 20  # grey noise, not flat
    coloured = rgb[labels > 0].astype(int)
    assert np.mean(coloured.max(axis=1) - coloured.min(axis=1)) > 30  # objects are saturated colours
