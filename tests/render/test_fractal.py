"""Fractal drawing: a known attractor, reproducibility per image, flips, and bad systems."""

from __future__ import annotations

import numpy as np
import pytest

from services.render.renderers.fractal import apply_flip, chaos_game, default_probs, draw_fractals
from services.common.seeds import rng_from_seed

SIERPINSKI = np.array([[0.5, 0, 0, 0.5, 0, 0], [0.5, 0, 0, 0.5, 0.5, 0], [0.5, 0, 0, 0.5, 0.25, 0.5]])


def test_chaos_game_points_lie_on_the_sierpinski_triangle():
    xs, ys = chaos_game([(SIERPINSKI, np.ones(3) / 3)], 20_000, [rng_from_seed(1)], chains=256)
    x, y = xs[0], ys[0]
    assert 20_000 <= len(x) < 20_000 + 256  # whole steps of all chains
    # the attractor is the triangle (0,0), (1,0), (0.5,1); its central hole holds no points
    assert x.min() >= -1e-6 and x.max() <= 1 + 1e-6 and y.min() >= -1e-6 and y.max() <= 1 + 1e-6
    hole = (y > 0.04) & (y < 0.48) & (np.abs(x - 0.5) < y / 2 - 0.02)  # inverted triangle (.25,.5) (.75,.5) (.5,0)
    assert not hole.any()
    # all three corners are visited
    for cx, cy in [(0, 0), (1, 0), (0.5, 1)]:
        assert np.hypot(x - cx, y - cy).min() < 0.01


def test_each_image_is_reproducible_alone_whatever_the_batch():
    rng = rng_from_seed(5)
    systems = [(m, default_probs(m)) for m in rng.uniform(-1, 1, (4, 3, 6))] + [(SIERPINSKI, np.ones(3) / 3)]
    batch = draw_fractals(systems, [10, 11, 12, 13, 14], image_size=64, points=5000)
    alone = draw_fractals(systems[3:], [13, 14], image_size=64, points=5000)
    assert np.array_equal(batch[3:], alone)
    assert not np.array_equal(batch[0], batch[1])


def test_images_are_grey_on_black_and_flips_mirror():
    image = draw_fractals([(SIERPINSKI, np.ones(3) / 3)], [1], image_size=96, points=20_000)[0]
    values = np.unique(image)
    assert values.tolist() == [0, 127]
    # FractalDB's framing (pad 6, patches at +1..+3, then flipped): drawn rows 2..88, columns 7..93 of 96
    rows, cols = np.nonzero(image)
    assert 2 <= rows.min() <= 4 and 86 <= rows.max() <= 88 and 7 <= cols.min() <= 9 and 91 <= cols.max() <= 93
    # the triangle's apex is at the top: its top row is mostly empty, its bottom row mostly filled
    assert (image[3] > 0).mean() < (image[87] > 0).mean()
    flipped = draw_fractals([(SIERPINSKI, np.ones(3) / 3)], [1], image_size=96, points=20_000, flips=[2])[0]
    assert np.array_equal(flipped, image[::-1])
    assert np.array_equal(apply_flip(image, 3), image[::-1, ::-1])


def test_bad_systems_are_refused():
    with pytest.raises(ValueError, match="shape"):
        draw_fractals([(np.zeros((2, 5)), np.ones(2))], [0], image_size=32, points=1000)
    with pytest.raises(ValueError, match="NaN"):
        draw_fractals([(np.full((2, 6), np.nan), np.ones(2))], [0], image_size=32, points=1000)


def test_torch_path_draws_the_same_images():
    pytest.importorskip("torch")
    rng = rng_from_seed(9)
    systems = [(m, default_probs(m)) for m in rng.uniform(-0.8, 0.8, (3, 3, 6))] + [(SIERPINSKI, np.ones(3) / 3)]
    on_numpy = draw_fractals(systems, [1, 2, 3, 4], image_size=48, points=4000, flips=[0, 1, 2, 3])
    on_torch = draw_fractals(systems, [1, 2, 3, 4], image_size=48, points=4000, flips=[0, 1, 2, 3], device="cpu")
    assert on_torch.dtype == np.uint8 and on_torch.shape == on_numpy.shape
    # float rounding (fused multiply-add) may move a point by one pixel, nothing more
    assert (on_torch != on_numpy).mean() < 0.002
    assert np.array_equal(on_torch[3], on_numpy[3])  # exact binary fractions: identical


def fractaldb_draw_patch(xs, ys, size, pad, patch):
    """FractalDB's ``fractal_renderer/ifs_function.py`` ``__rescale`` + ``draw_patch`` (every patch cell on) + flip."""
    xs, ys = np.array(xs, dtype=float), np.array(ys, dtype=float)
    if np.min(xs) < 0.0:
        xs -= np.min(xs)
    if np.min(ys) < 0.0:
        ys -= np.min(ys)
    xmax, xmin, ymax, ymin = np.max(xs), np.min(xs), np.max(ys), np.min(ys)
    px = np.uint16(xs / (xmax - xmin) * float(size - 2 * pad) + float(pad))
    py = np.uint16(ys / (ymax - ymin) * float(size - 2 * pad) + float(pad))
    image = np.zeros((size, size), dtype=np.uint8)
    for x, y in zip(px.tolist(), py.tolist()):  # image.paste(patch, (x + 1, y + 1)), clipped to the image
        image[y + 1:y + 1 + patch, x + 1:x + 1 + patch] = 127
    return image[::-1]  # image.transpose(Image.FLIP_TOP_BOTTOM)


@pytest.mark.parametrize("size, pad, patch", [(362, 6, 3), (40, 6, 3), (32, 0, 1), (50, 3, 5)])
def test_points_land_where_fractaldb_draws_them(size, pad, patch):
    from services.render.renderers.fractal import rasterise

    rng = rng_from_seed(size + pad)
    # the origin first, as in FractalDB's chain; the cloud spans both signs
    xs = np.concatenate([[0.0], rng.uniform(-1.5, 0.7, 300), [0.7]])
    ys = np.concatenate([[0.0], rng.uniform(-0.2, 2.0, 300), [-0.2]])
    drawn = rasterise(xs[None], ys[None], size, patch, np.ones((1, size, size), dtype=bool), pad)[0]
    assert np.array_equal(drawn, fractaldb_draw_patch(xs, ys, size, pad, patch))


def test_clouds_past_float_range_stay_inside_the_image():
    from services.render.renderers.fractal import rasterise

    xs = np.array([[0.0, 1e308, -1e308, 0.5]])
    ys = np.array([[0.0, 1.0, 2.0, -3e38]])
    image = rasterise(xs, ys, 32, 3, np.ones((1, 32, 32), dtype=bool), 6)[0]
    assert image.shape == (32, 32) and image.any()


def test_draw_fractals_frames_the_origin_with_the_cloud():
    # a system whose attractor lies far from the origin: FractalDB's chain starts at (0, 0), so its box does too
    far = np.array([[0.5, 0, 0, 0.5, 10.0, 10.0], [0.5, 0, 0, 0.5, 10.5, 10.0]])
    image = draw_fractals([(far, np.ones(2) / 2)], [0], image_size=64, points=4000, patch=1)[0]
    # the origin is the lower-left corner: pixel (6, 6) before the +1 patch offset, flipped
    assert image[64 - 1 - 7, 7] > 0
    assert not image[20:40, 7:40].any()  # the attractor sits at the upper right, nothing in between


def test_patches_keep_about_half_the_covered_pixels_like_fractaldb():
    from services.render.renderers.fractal import patch_bit_probability, rasterise

    assert patch_bit_probability(3) == pytest.approx(256 / 511)
    xs, ys = chaos_game([(SIERPINSKI, np.ones(3) / 3)], 30_000, [rng_from_seed(2)], chains=256)
    covered = rasterise(xs, ys, 128, 3, np.ones((1, 128, 128), dtype=bool))[0] > 0
    points_only = rasterise(xs, ys, 128, 1, np.ones((1, 128, 128), dtype=bool))[0] > 0
    assert covered.sum() > points_only.sum() and np.all(covered[points_only])  # patches grow the points
    keep = rng_from_seed(3).random((1, 128, 128)) < patch_bit_probability(3)
    speckled = rasterise(xs, ys, 128, 3, keep)[0] > 0
    assert not np.any(speckled & ~covered)
    assert speckled.sum() / covered.sum() == pytest.approx(256 / 511, abs=0.03)
