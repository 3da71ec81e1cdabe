"""3D surface noise (improved Perlin, sparse convolution) and the surface-textured scenes drawn with it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.common.seeds import rng_from_seed
from services.common.spec.render import NoiseSceneParams
from services.render.renderers.noise3d import (KIND_CODES, background_noise, impulse_table, label_counts, noise_at,
                                               permutation_table, sparse3)
from services.render.renderers.scenes import draw_scene, ray_cast_ellipsoid, sample_scene


def tables(seed: int):
    rng = rng_from_seed(seed)
    return permutation_table(rng), impulse_table(rng)


def reference_perlin(x: float, y: float, z: float, p: np.ndarray) -> float:
    """Ken Perlin's reference ImprovedNoise.noise (Java, 2002), transcribed line for line (scalar, branchy grad)."""

    def fade(t):
        return t * t * t * (t * (t * 6 - 15) + 10)

    def lerp(t, a, b):
        return a + t * (b - a)

    def grad(h, x, y, z):
        h &= 15
        u = x if h < 8 else y
        v = y if h < 4 else (x if h in (12, 14) else z)
        return (u if h & 1 == 0 else -u) + (v if h & 2 == 0 else -v)

    X, Y, Z = int(math.floor(x)) & 255, int(math.floor(y)) & 255, int(math.floor(z)) & 255
    x, y, z = x - math.floor(x), y - math.floor(y), z - math.floor(z)
    u, v, w = fade(x), fade(y), fade(z)
    A = p[X] + Y; AA = p[A] + Z; AB = p[A + 1] + Z  # noqa: E702
    B = p[X + 1] + Y; BA = p[B] + Z; BB = p[B + 1] + Z  # noqa: E702
    return lerp(w, lerp(v, lerp(u, grad(p[AA], x, y, z), grad(p[BA], x - 1, y, z)),
                        lerp(u, grad(p[AB], x, y - 1, z), grad(p[BB], x - 1, y - 1, z))),
                lerp(v, lerp(u, grad(p[AA + 1], x, y, z - 1), grad(p[BA + 1], x - 1, y, z - 1)),
                     lerp(u, grad(p[AB + 1], x, y - 1, z - 1), grad(p[BB + 1], x - 1, y - 1, z - 1))))


def test_perlin_matches_the_reference_implementation_and_vanishes_on_the_lattice():
    perm, impulses = tables(3)
    rng = np.random.default_rng(0)
    points = rng.uniform(-300, 300, (500, 3))
    ours = noise_at(KIND_CODES["perlin"], points, perm, impulses)
    assert np.allclose(ours, [reference_perlin(*p, perm) for p in points], atol=1e-12)
    lattice = rng.integers(-1000, 1000, (2000, 3)).astype(float)
    assert np.all(noise_at(KIND_CODES["perlin"], lattice, perm, impulses) == 0.0)
    assert np.abs(ours).max() > 0.3  # not trivially zero elsewhere


@pytest.mark.parametrize("kind", ["perlin", "sparse_convolution"])
def test_noise_is_bounded_seeded_zero_mean_and_continuous(kind):
    rng = np.random.default_rng(1)
    points = rng.uniform(0, 64, (40_000, 3))
    values = noise_at(KIND_CODES[kind], points, *tables(5))
    assert np.all(np.abs(values) <= 1.0)
    assert abs(values.mean()) < 0.02 and 0.12 < values.std() < 0.35  # comparable spreads for both kinds
    assert np.mean(np.abs(values) >= 1.0) < 0.005  # the sparse clip is rare
    assert np.array_equal(values, noise_at(KIND_CODES[kind], points, *tables(5)))  # same seed, same noise
    assert not np.allclose(values, noise_at(KIND_CODES[kind], points, *tables(6)))
    near = noise_at(KIND_CODES[kind], points + 1e-6, *tables(5))
    assert np.abs(near - values).max() < 1e-4  # continuous
    # correlated at a tenth of a cell, nearly independent two cells apart: one feature per lattice cell
    assert np.corrcoef(values, noise_at(KIND_CODES[kind], points + [0.1, 0, 0], *tables(5)))[0, 1] > 0.8
    assert abs(np.corrcoef(values, noise_at(KIND_CODES[kind], points + [2.0, 0, 0], *tables(5)))[0, 1]) < 0.1


def test_sparse_noise_is_the_sum_of_cubic_kernels_around_hashed_impulses():
    perm, impulses = tables(7)
    point = np.array([10.3, 20.6, 30.2])
    total = 0.0
    for cell in np.ndindex(5, 5, 5):  # brute force over a wider neighbourhood than the kernel reaches
        c = np.floor(point).astype(int) + np.array(cell) - 2
        h = perm[perm[perm[c[0] & 255] + (c[1] & 255)] + (c[2] & 255)]
        for k in range(impulses.shape[1]):
            s = float(np.sum((c + impulses[h, k, :3] - point) ** 2))
            if s < 1:
                total += impulses[h, k, 3] * (1 - 22 / 9 * s + 17 / 9 * s**2 - 4 / 9 * s**3)
    assert sparse3(*point, perm, impulses) == pytest.approx(np.clip(total / 2.4, -1, 1), abs=1e-12)


def one_object(size: int, centre, kind: str = "perlin", semi_axes=(0.2, 0.12, 0.15)) -> dict:
    record = sample_scene(NoiseSceneParams(image_size=size, objects_range=(1, 1), noise=kind), 3, root_seed=0,
                          dataset_id="t", scene=4)
    record["objects"][0].update(centre=list(centre), semi_axes=list(semi_axes), noise_scale=6.0)
    return record


@pytest.mark.parametrize("kind", ["perlin", "sparse_convolution"])
def test_texture_moves_with_the_surface_and_the_background_stays(kind):
    size, shift = 96, 17  # pixels
    rgb, labels = draw_scene(one_object(size, (0.4, 0.45, 0.5), kind))
    moved_rgb, moved_labels = draw_scene(one_object(size, (0.4 + shift / size, 0.45, 0.5), kind))
    inside = labels > 0
    assert inside.sum() > 600 and np.array_equal(np.roll(labels, shift, axis=1), moved_labels)
    # the same surface points: the same colours, up to rounding of the shifted coordinates
    a = rgb[inside].astype(int)
    b = np.roll(moved_rgb, -shift, axis=1)[inside].astype(int)
    assert np.mean(np.abs(a - b) <= 1) > 0.999
    assert a.std(axis=0).max() > 8  # textured, not flat
    # not a texture fixed in the image: where both positions of the object overlap, the colours differ
    overlap = inside & (moved_labels > 0)
    assert overlap.sum() > 100
    assert np.mean(np.abs(rgb[overlap].astype(int) - moved_rgb[overlap].astype(int)).max(axis=1) > 2) > 0.5
    background = (labels == 0) & (moved_labels == 0)
    assert np.array_equal(rgb[background], moved_rgb[background])


def test_texture_is_a_function_of_the_object_frame_not_the_object_size():
    """Stretching the ellipsoid stretches its texture: the same unit-sphere point gives the same noise."""
    size = 128
    small = one_object(size, (0.5, 0.5, 0.5), semi_axes=(0.1, 0.1, 0.1))
    large = one_object(size, (0.5, 0.5, 0.5), semi_axes=(0.3, 0.3, 0.3))
    for record in (small, large):
        record["objects"][0].update(ks=0.0)
    rgb_small, labels_small = draw_scene(small)
    rgb_large, _ = draw_scene(large)
    # pixel (r, c) of the small sphere sees unit-sphere point ((c + .5)/size - .5) / 0.1; the large one sees the
    # same point at three times the offset from the centre (same normal, so the same shading too)
    rows = np.arange(size)
    big_rows = np.round(((rows + 0.5) / size - 0.5) * 3 * size + size / 2 - 0.5).astype(int)
    # pixels whose tripled offset lands exactly on a pixel centre of the large sphere (size 128: every one)
    exact = np.isclose((big_rows + 0.5) / size - 0.5, 3 * ((rows + 0.5) / size - 0.5)) & (big_rows >= 0) & (big_rows < size)
    inside = (labels_small > 0) & exact[:, None] & exact[None, :]
    assert inside.sum() > 300
    r, c = np.nonzero(inside)
    a = rgb_small[r, c].astype(int)
    b = rgb_large[big_rows[r], big_rows[c]].astype(int)
    assert np.abs(a - b).max() <= 1 and a.std(axis=0).max() > 8


def test_label_map_matches_the_object_masks_of_a_published_scene():
    size = 80
    record = sample_scene(NoiseSceneParams(image_size=size, objects_range=(12, 12)), 3, root_seed=9, dataset_id="t",
                          scene=2)
    _, labels = draw_scene(record)
    heights = np.stack([ray_cast_ellipsoid(obj, size)[0] for obj in record["objects"]])  # numpy reference
    front = np.argmax(heights, axis=0)
    visible = np.isfinite(heights).any(axis=0)
    classes = np.array([obj["class_index"] + 1 for obj in record["objects"]])
    expected = np.where(visible, classes[front], 0)
    assert np.array_equal(labels, expected)
    assert len(np.unique(labels)) >= 3
    for o, obj in enumerate(record["objects"]):  # each object's mask is where it is in front
        mask = visible & (front == o)
        assert np.all(labels[mask] == obj["class_index"] + 1)


def test_both_noise_kinds_alternate_by_scene():
    params = NoiseSceneParams(image_size=16, noise="both")
    kinds = [sample_scene(params, 3, root_seed=0, dataset_id="t", scene=s)["noise"] for s in range(4)]
    assert kinds == ["perlin", "sparse_convolution", "perlin", "sparse_convolution"]


def test_bad_records_are_refused_with_the_field_named():
    record = one_object(32, (0.5, 0.5, 0.5))
    record["noise"] = "simplex"
    with pytest.raises(ValueError, match="noise kind"):
        draw_scene(record)
    record = one_object(32, (0.5, 0.5, 0.5))
    record["objects"][0]["semi_axes"] = [0.1, 0.0, 0.1]
    with pytest.raises(ValueError, match="semi_axes"):
        draw_scene(record)


@pytest.mark.parametrize("scale", [1.0, 3.7, 20.0])
def test_background_plane_is_the_noise_at_each_pixel_centre(scale):
    """The background's row-wise Perlin and splatted sparse noise equal the per-point functions on the plane."""
    perm, impulses = tables(11)
    offset = np.array([17.3, 201.9, 55.4])
    size = 96
    u = (np.arange(size) + 0.5) / size
    x, y = np.meshgrid(u * scale + offset[0], u * scale + offset[1])
    points = np.stack([x.ravel(), y.ravel(), np.full(x.size, offset[2])], axis=1)
    perlin = noise_at(KIND_CODES["perlin"], points, perm, impulses).reshape(size, size)
    assert np.array_equal(background_noise("perlin", size, scale, offset, perm, impulses), perlin)  # bit for bit
    sparse = noise_at(KIND_CODES["sparse_convolution"], points, perm, impulses).reshape(size, size)
    splatted = background_noise("sparse_convolution", size, scale, offset, perm, impulses)
    assert np.allclose(splatted, sparse, rtol=0, atol=1e-12) and np.abs(sparse).max() > 0.2


def test_label_counts_match_bincount():
    labels = np.random.default_rng(2).integers(0, 7, (64, 48)).astype(np.uint16)
    assert np.array_equal(label_counts(labels), np.bincount(labels.ravel()))
    assert np.array_equal(label_counts(np.zeros((3, 3), np.uint16)), [9])


def test_sparse_noise_in_tiles_draws_what_per_pixel_noise_draws(monkeypatch):
    """Objects whose lattice cells span half a pixel or more get their sparse noise in tiles (one impulse gather
    per tile); the same scenes drawn with per-pixel noise agree to rounding."""
    import services.render.renderers.scenes as scenes

    params = NoiseSceneParams(image_size=128, objects_range=(8, 12), noise="sparse_convolution")
    records = [sample_scene(params, 3, root_seed=1, dataset_id="t", scene=s) for s in range(3)]
    for record in records:  # every tile regime: about 0.3 to 40 pixels per lattice cell
        for i, obj in enumerate(record["objects"]):
            obj["noise_scale"] = [1.5, 4.0, 12.0, 40.0][i % 4]
    tiled = [draw_scene(record) for record in records]
    monkeypatch.setattr(scenes, "tile_pixels", lambda pixels_per_cell: 0)
    for record, (rgb, labels) in zip(records, tiled):
        per_pixel_rgb, per_pixel_labels = draw_scene(record)
        assert np.array_equal(labels, per_pixel_labels) and (labels > 0).mean() > 0.1
        assert np.abs(rgb.astype(int) - per_pixel_rgb).max() <= 1
        assert np.mean(rgb == per_pixel_rgb) > 0.9999
