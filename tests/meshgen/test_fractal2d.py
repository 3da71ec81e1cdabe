"""fractal2d: filling-rate search, chaos game, FractalDB weight variants."""

from __future__ import annotations

import time

import numpy as np
import pytest
from pydantic import ValidationError

from services.common.errors import SpecError
from services.common.seeds import rng_from_seed
from services.common.spec.meshgen import Fractal2DParams
from services.meshgen.fractal2d import chaos_game, filling_rate, ifs_variants, map_probabilities, search_ifs

FAST = dict(search_points=20_000, search_size=128)


@pytest.mark.parametrize("threshold", [0.1, 0.25])
def test_accepted_systems_reach_the_threshold(threshold):
    params = Fractal2DParams(filling_rate=threshold, **FAST)
    for seed in range(3):
        ifs = search_ifs(params, seed)
        assert ifs.filling_rate >= threshold
        # recomputing with the same draw gives the recorded rate
        assert 2 <= len(ifs.maps) <= 7 and np.all(np.abs(ifs.maps) <= 1)
        assert np.isclose(ifs.probs.sum(), 1.0)


def test_higher_threshold_rejects_more():
    low = sum(search_ifs(Fractal2DParams(filling_rate=0.05, **FAST), s).rejections for s in range(4))
    high = sum(search_ifs(Fractal2DParams(filling_rate=0.3, **FAST), s).rejections for s in range(4))
    assert high > low


def fractaldb_chain(maps, probs, uniforms):
    """FractalDB's ``param_search/ifs_simple.py`` ``ifs_function.calculate``, transcribed: one chain from (0, 0)."""
    select = np.cumsum(probs).tolist()
    functions = [tuple(float(v) for v in row) for row in maps]
    xs, ys = [0.0], [0.0]
    prev_x = prev_y = next_x = next_y = 0.0
    for u in uniforms.tolist():
        for j, edge in enumerate(select):
            if u <= edge:
                a, b, c, d, e, f = functions[j]
                next_x = prev_x * a + prev_y * b + e
                next_y = prev_x * c + prev_y * d + f
                break
        xs.append(next_x), ys.append(next_y)
        prev_x, prev_y = next_x, next_y
    return np.array(xs), np.array(ys)


def fractaldb_filling_rate(xs, ys, size=512, pad=6):
    """FractalDB's ``ifs_function.__rescale`` + ``draw_point(512, 512, 6, 6)`` + ``cal_pix``, transcribed."""
    if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
        return 0.0  # FractalDB draws a diverging chain's remains into a line or a corner: far below any threshold
    if np.min(xs) < 0.0:
        xs = xs - np.min(xs)
    if np.min(ys) < 0.0:
        ys = ys - np.min(ys)
    xmax, xmin, ymax, ymin = np.max(xs), np.min(xs), np.max(ys), np.min(ys)
    px = np.uint16(xs / (xmax - xmin) * float(size - 2 * pad) + float(pad))
    py = np.uint16(ys / (ymax - ymin) * float(size - 2 * pad) + float(pad))
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[py, px, :] = 127, 127, 127
    gray = image[:, :, 0]
    return np.count_nonzero(gray) / float(gray.shape[0] * gray.shape[1])


@pytest.mark.parametrize("threshold, seeds", [(0.2, range(5)), (0.22, range(5, 7))])
def test_accepted_systems_reach_the_threshold_by_fractaldb_measure(threshold, seeds):
    """Recomputed here from FractalDB's code, on the chain's own map choices, at FractalDB's settings."""
    params = Fractal2DParams(filling_rate=threshold)
    assert (params.search_size, params.search_pad, params.search_points) == (512, 6, 100_000)  # FractalDB's defaults
    for seed in seeds:
        ifs = search_ifs(params, seed)
        uniforms = rng_from_seed(ifs.chain_seed).random(params.search_points - 1)
        xs, ys = fractaldb_chain(ifs.maps, ifs.probs, uniforms)
        assert len(xs) == 100_000
        rate = fractaldb_filling_rate(xs, ys)
        assert rate >= threshold, (seed, rate)
        assert rate == pytest.approx(ifs.filling_rate, abs=2e-5)  # the same pixels, up to float rounding


def test_chaos_game_is_fractaldb_chain():
    for maps in (np.array([[0.5, 0, 0, 0.5, 0, 0], [0.5, 0, 0, 0.5, 0.5, 0], [0.5, 0, 0, 0.5, 0.25, 0.5]]),
                 rng_from_seed(4).uniform(-1, 1, (5, 6))):
        probs = map_probabilities(maps)
        xy = chaos_game(maps, probs, 7001, rng_from_seed(8))
        xs, ys = fractaldb_chain(maps, probs, rng_from_seed(8).random(7000))
        assert xy.shape == (7001, 2) and np.array_equal(xy[0], [0.0, 0.0])
        assert np.allclose(xy[:, 0], xs, rtol=0, atol=1e-9) and np.allclose(xy[:, 1], ys, rtol=0, atol=1e-9)


def test_filling_rate_maps_points_like_fractaldb():
    # extremes land on pixels pad and size - pad (truncated), each axis on its own
    xy = np.array([[0.0, 0.0], [2.0, 1.0], [1.0, 0.25], [0.999, 0.999]])
    assert filling_rate(xy, 512, 6) == 4 / 512**2
    xs, ys = xy[:, 0], xy[:, 1]
    assert filling_rate(xy) == fractaldb_filling_rate(xs, ys)
    from services.meshgen.fractal2d import fractaldb_pixels

    assert fractaldb_pixels(xs, 512, 6).tolist() == [6, 506, 256, 255]
    assert fractaldb_pixels(ys, 362, 6).tolist() == [6, 356, 93, 355]


def test_unreachable_threshold_fails_at_once_with_a_spec_error():
    t0 = time.perf_counter()
    # refused when the spec is read: 100,000 points cover at most 0.381 of a 512 px image
    with pytest.raises(ValidationError, match="filling_rate .* can never be reached"):
        Fractal2DParams(filling_rate=0.99)
    # and by the search itself, before any system is drawn
    params = Fractal2DParams().model_copy(update={"filling_rate": 0.99})
    with pytest.raises(SpecError, match="filling_rate=0.99 can never be reached.*search_points"):
        search_ifs(params, 0)
    assert time.perf_counter() - t0 < 20


def test_threshold_out_of_reach_ends_after_max_attempts():
    t0 = time.perf_counter()
    with pytest.raises(SpecError, match="max_attempts=5"):
        search_ifs(Fractal2DParams(filling_rate=0.7, max_attempts=5, **FAST), 0)
    assert time.perf_counter() - t0 < 20
    assert Fractal2DParams().max_attempts == 1000  # documented: ~10 s of search per core, not 100,000 draws


def test_sierpinski_filling_rate_is_known():
    maps = np.array([[0.5, 0, 0, 0.5, 0, 0], [0.5, 0, 0, 0.5, 0.5, 0], [0.5, 0, 0, 0.5, 0.25, 0.5]])
    xy = chaos_game(maps, map_probabilities(maps), 200_000, np.random.default_rng(0))
    assert np.isfinite(xy).all()
    rate = filling_rate(xy, 256)
    # Sierpinski triangle at 256 px covers far less than the triangle's half but clearly more than a line
    assert 0.1 < rate < 0.45
    # a point cloud on a line covers almost nothing; a diverging one covers nothing
    assert filling_rate(np.stack([np.linspace(0, 1, 1000)] * 2, axis=1), 256) < 0.01
    assert filling_rate(np.array([[np.inf, 0.0], [0.0, 1.0]]), 256) == 0.0
    # finite but past float range once shifted (a diverging chain): covers nothing, does not crash
    assert filling_rate(np.array([[0.0, 0.0], [1e308, 1.0], [-1e308, 2.0]])) == 0.0


def test_variants_are_fractaldb_weights():
    maps = np.random.default_rng(0).uniform(-1, 1, (3, 6))
    variants = ifs_variants(maps, 0.4)
    assert len(variants) == 25
    assert np.array_equal(variants[0], maps)
    for k, variant in enumerate(variants[1:]):
        changed = np.flatnonzero(~np.isclose(variant, maps).all(axis=0))
        assert list(changed) == [k // 4]  # exactly one coefficient position
        ratio = variant[:, k // 4] / maps[:, k // 4]
        assert np.allclose(ratio, [0.2, 0.6, 1.4, 1.8][k % 4])


def test_bad_parameters_name_the_field():
    for bad, field in [({"filling_rate": 1.5}, "filling_rate"), ({"maps_range": {"low": 0, "high": 3}}, "maps_range"),
                       ({"weight_step": 0}, "weight_step")]:
        with pytest.raises(ValidationError, match=field):
            Fractal2DParams(**bad)
