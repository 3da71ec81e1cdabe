"""FractalDB classes (Kataoka et al., ACCV 2020): iterated function systems searched by filling rate.

A class is an IFS of N affine maps (N uniform in ``maps_range``, each map's six
coefficients uniform in ``coefficient_range``), map ``i`` being
``x' = a x + b y + e, y' = c x + d y + f`` for the row ``[a, b, c, d, e, f]``,
chosen with probability proportional to ``|ad - bc|``. A system is accepted when
its chaos-game point cloud covers at least ``filling_rate`` of the pixels of an
image; otherwise a new system is drawn, at most ``max_attempts`` times.

The filling rate is FractalDB's (``param_search/ifs_search.py`` with
``param_search/ifs_simple.py`` of hirokatsukataoka16/FractalDB-Pretrained-ResNet-PyTorch):
``numof_point`` = 100,000 points, the first of them the origin (its chain starts
at ``(0, 0)`` and keeps it), drawn into a 512 x 512 image with a 6 px pad
(``draw_point(512, 512, 6, 6, ...)``): ``ifs_function.__rescale`` shifts each
axis by its minimum (the origin makes it <= 0) and maps it to
``uint16(v / (max - min) * (512 - 2*6) + 6)``, i.e. truncated, pixels 6..506;
``cal_pix`` is the fraction of non-zero pixels of the 512 x 512 image. Here
``search_points``, ``search_size`` and ``search_pad`` hold these numbers.

The points are FractalDB's too: one chain from the origin, no burn-in
(:func:`chaos_game`, computed in blocks rather than point by point). Many short
parallel chains with a short burn-in, as this module used before, over-count
slowly contracting systems (a near-rotation map chosen 98 % of the time: 0.21
on short chains against 0.14 on FractalDB's chain), so they are not used here.

The search is bounded twice: a threshold above what ``search_points`` points can
cover on the padded image at all is refused at once (spec validation and here),
and ``max_attempts`` (default 1,000) caps the systems tried: at the default
threshold one system in 30 to 50 passes, so 1,000 straight rejections are odds
of ~2e-9 for a reachable threshold, and ~10-15 s of search on one core for an
unreachable one.

Instances are FractalDB's 25 weight variants (:func:`ifs_variants`); the render
stage draws them (flips, several drawings per variant).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.common.cancel import check_cancelled
from services.common.errors import SpecError
from services.common.seeds import rng_from_seed
from services.common.spec.meshgen import Fractal2DParams

BLOCK = 48  # chaos-game steps per block (see chaos_game)
FRACTALDB_SIZE = 512  # param_search/ifs_search.py: draw_point(512, 512, 6, 6, 'gray', 0)
FRACTALDB_PAD = 6


@dataclass
class IFSClass:
    """An accepted iterated function system.

    Attributes
    ----------
    maps : (n, 6) float
        Rows ``[a, b, c, d, e, f]``.
    probs : (n,) float
        Selection probabilities (sum 1).
    filling_rate : float
        Fraction of pixels its point cloud covered in the search.
    seed : int
        The class seed it was drawn from.
    rejections : int
        Systems rejected before this one.
    chain_seed : int
        Seed of the chaos game the filling rate was measured on
        (:func:`search_cloud` redraws that point cloud).
    """

    maps: np.ndarray
    probs: np.ndarray
    filling_rate: float
    seed: int
    rejections: int
    chain_seed: int = 0

    def to_json(self) -> dict:
        """The stored class definition (``meshes/<dataset>/<class>/ifs.json``)."""
        return {
            "maps": self.maps.tolist(),
            "probs": self.probs.tolist(),
            "filling_rate": self.filling_rate,
            "seed": self.seed,
        }


def map_probabilities(maps: np.ndarray) -> np.ndarray:
    """Selection probabilities proportional to ``|det|`` of each map's linear part, shape (n,).

    Systems whose maps are all singular get equal probabilities.
    """
    det = np.abs(maps[:, 0] * maps[:, 3] - maps[:, 1] * maps[:, 2])
    total = det.sum()
    return det / total if total > 0 else np.full(len(maps), 1.0 / len(maps))


def chaos_game(maps: np.ndarray, probs: np.ndarray, points: int, rng: np.random.Generator,
               block: int = BLOCK) -> np.ndarray:
    """FractalDB's chaos game (``ifs_simple.ifs_function.calculate``): one chain from the origin.

    ``x_0 = (0, 0)`` is the first point; ``x_{t+1}`` is map ``j_t`` applied to
    ``x_t``, ``j_t`` the first map whose cumulative probability reaches the
    uniform draw ``u_t`` (FractalDB: ``rand[i] <= select_function[j]``). No
    burn-in: the origin and the chain's approach to the attractor are part of the
    cloud, as in FractalDB.

    The chain is sequential, but not computed point by point in Python: it is cut
    into blocks of ``block`` steps; the composition of each block's maps is built
    for all blocks at once (``block`` vector steps), the blocks' start points
    follow from those compositions (a prefix scan, ``log2(blocks)`` vector
    steps), and then all blocks are run from their start points at once
    (``block`` vector steps). The points are the sequential chain's up to float
    rounding.

    Parameters
    ----------
    maps : (n, 6) float
    probs : (n,) float
    points : int
        Number of points returned, the origin included.
    rng : numpy.random.Generator
        The ``points - 1`` uniform draws choosing the maps.

    Returns
    -------
    xy : (points, 2) float (may hold inf/nan for diverging systems)
    """
    maps = np.asarray(maps, dtype=np.float64)
    steps = points - 1
    uniforms = rng.random(steps)
    pick = np.minimum(np.searchsorted(np.cumsum(probs), uniforms, side="left"), len(maps) - 1)
    blocks = max(1, -(-steps // block))
    # the table with an identity map appended, which pads the last block
    table = np.vstack([maps, [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]])
    padded = np.full(blocks * block, len(maps), dtype=np.int64)
    padded[:steps] = pick
    coef = np.ascontiguousarray(table[padded.reshape(blocks, block)].transpose(1, 2, 0))  # (block, 6, blocks)
    with np.errstate(over="ignore", invalid="ignore"):
        # 1. each block's composed map  p -> A p + t
        a11, a12, a21, a22 = np.ones(blocks), np.zeros(blocks), np.zeros(blocks), np.ones(blocks)
        tx, ty = np.zeros(blocks), np.zeros(blocks)
        for k in range(block):
            a, b, c, d, e, f = coef[k]
            a11, a12, a21, a22 = a * a11 + b * a21, a * a12 + b * a22, c * a11 + d * a21, c * a12 + d * a22
            tx, ty = a * tx + b * ty + e, c * tx + d * ty + f
        # 2. the start point of every block: the offsets of the prefix compositions (a log-depth scan)
        shift = 1
        while shift < blocks:
            m11, m12, m21, m22 = a11[shift:], a12[shift:], a21[shift:], a22[shift:]
            p11, p12, p21, p22, px, py = (v[:-shift] for v in (a11, a12, a21, a22, tx, ty))
            a11, a12, a21, a22, tx, ty = (np.concatenate([v[:shift], w]) for v, w in (
                (a11, m11 * p11 + m12 * p21), (a12, m11 * p12 + m12 * p22), (a21, m21 * p11 + m22 * p21),
                (a22, m21 * p12 + m22 * p22), (tx, m11 * px + m12 * py + tx[shift:]),
                (ty, m21 * px + m22 * py + ty[shift:])))
            shift *= 2
        starts = np.zeros((blocks, 2))
        starts[1:, 0], starts[1:, 1] = tx[:-1], ty[:-1]
        # 3. all blocks stepped from their start points at once
        out = np.empty((2, blocks, block))
        x, y = starts[:, 0], starts[:, 1]
        for k in range(block):
            a, b, c, d, e, f = coef[k]
            x, y = a * x + b * y + e, c * x + d * y + f
            out[0, :, k] = x
            out[1, :, k] = y
    xy = np.empty((2, points))  # returned transposed: each coordinate contiguous
    xy[:, 0] = 0.0
    xy[:, 1:] = out.reshape(2, -1)[:, :steps]
    return xy.T


def search_cloud(maps: np.ndarray, probs: np.ndarray, points: int, chain_seed: int) -> np.ndarray:
    """The point cloud the search measured for a system: :func:`chaos_game` drawn from ``chain_seed``."""
    return chaos_game(maps, probs, points, rng_from_seed(chain_seed))


def fractaldb_pixels(v: np.ndarray, size: int, pad: int) -> np.ndarray:
    """FractalDB's pixel index of each coordinate along one axis (``ifs_function.__rescale``).

    ``v - min(v)`` (FractalDB subtracts the minimum when it is negative, which the
    origin in its cloud guarantees), scaled by ``(size - 2 pad) / (max - min)``,
    plus ``pad``, truncated: the extremes land on pixels ``pad`` and
    ``size - pad`` (clipped to ``size - 1`` when ``pad`` is 0).
    """
    lo, hi = v.min(), v.max()
    u = (v - lo) / (hi - lo) * float(size - 2 * pad) + float(pad)
    return np.minimum(u.astype(np.int64), size - 1)


def filling_rate(xy: np.ndarray, size: int = FRACTALDB_SIZE, pad: int = FRACTALDB_PAD) -> float:
    """FractalDB's filling rate: the fraction of a ``size`` x ``size`` image's pixels the points hit.

    Each axis is mapped to pixels by :func:`fractaldb_pixels` (independently, a
    ``pad`` px border left free on every side); the rate counts hit pixels over the
    whole image, border included (``cal_pix``). Non-finite or degenerate
    clouds cover nothing (FractalDB would draw a diverging system's few
    pre-divergence points; it fails any threshold either way).
    """
    x, y = np.ascontiguousarray(xy[:, 0]), np.ascontiguousarray(xy[:, 1])
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return 0.0
    with np.errstate(over="ignore"):
        for v in (x, y):
            lo, hi = v.min(), v.max()
            span = hi - lo
            if not np.isfinite(span) or span <= 1e-12 * max(abs(hi), 1.0):  # diverged (past float range) or flat
                return 0.0
    px, py = fractaldb_pixels(x, size, pad), fractaldb_pixels(y, size, pad)
    covered = np.zeros(size * size, dtype=bool)
    covered[py * size + px] = True
    return float(np.count_nonzero(covered)) / (size * size)


def reachable_filling_rate(points: int, size: int, pad: int) -> float:
    """The largest filling rate ``points`` points can reach: one per pixel of the padded square."""
    inner = size - 2 * pad + 1 if pad > 0 else size
    return min(points, inner * inner) / float(size * size)


def search_ifs(params: Fractal2DParams, seed: int) -> IFSClass:
    """The first system drawn from ``seed`` whose filling rate reaches ``params.filling_rate``.

    Raises
    ------
    SpecError
        At once when ``filling_rate`` is above :func:`reachable_filling_rate`;
        after ``max_attempts`` rejected systems (the threshold is too high for
        the coefficient range); either names the fields to change.
    """
    reachable = reachable_filling_rate(params.search_points, params.search_size, params.search_pad)
    if params.filling_rate > reachable:
        raise SpecError(
            f"fractal2d: filling_rate={params.filling_rate} can never be reached: search_points="
            f"{params.search_points} points cover at most {reachable:.3f} of a search_size={params.search_size} "
            f"image with search_pad={params.search_pad}; lower filling_rate or raise search_points"
        )
    rng = rng_from_seed(seed)
    best = 0.0
    for attempt in range(params.max_attempts):
        check_cancelled("fractal2d")  # a served call whose client left stops here
        n = int(rng.integers(params.maps_range.low, params.maps_range.high + 1))
        maps = rng.uniform(params.coefficient_range.low, params.coefficient_range.high, (n, 6))
        probs = map_probabilities(maps)
        chain_seed = int(rng.integers(0, 2**63 - 1))
        xy = search_cloud(maps, probs, params.search_points, chain_seed)
        rate = filling_rate(xy, params.search_size, params.search_pad)
        if rate >= params.filling_rate:
            return IFSClass(maps=maps, probs=probs, filling_rate=rate, seed=int(seed), rejections=attempt,
                            chain_seed=chain_seed)
        best = max(best, rate)
    raise SpecError(
        f"fractal2d: no system reached filling_rate={params.filling_rate} in max_attempts={params.max_attempts} "
        f"draws (best {best:.3f}); lower filling_rate or raise max_attempts"
    )


def ifs_variants(maps: np.ndarray, weight_step: float) -> list[np.ndarray]:
    """FractalDB's 25 weight variants of a class.

    The original system, then, for each of the six coefficient positions
    ``a..f`` in turn, that coefficient of every map scaled by ``1-2w, 1-w, 1+w,
    1+2w`` (FractalDB's weights 0.2, 0.6, 1.4, 1.8 for w=0.4; the weight 1.0 of
    each position is the original, listed once).

    Parameters
    ----------
    maps : (n, 6) float
    weight_step : float
        w.

    Returns
    -------
    list of 25 (n, 6) float arrays
    """
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 2 or maps.shape[1] != 6:
        raise ValueError(f"maps must have shape (n, 6), got {maps.shape}")
    factors = (1.0 - 2.0 * weight_step, 1.0 - weight_step, 1.0 + weight_step, 1.0 + 2.0 * weight_step)
    variants = [maps.copy()]
    for position in range(6):
        for factor in factors:
            variant = maps.copy()
            variant[:, position] *= factor
            variants.append(variant)
    return variants
