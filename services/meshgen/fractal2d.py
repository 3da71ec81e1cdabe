"""FractalDB classes (Kataoka et al., ACCV 2020): iterated function systems searched by filling rate.

A class is an IFS of N affine maps (N uniform in ``maps_range``, each map's six
coefficients uniform in ``coefficient_range``), map ``i`` being
``x' = a x + b y + e, y' = c x + d y + f`` for the row ``[a, b, c, d, e, f]``,
chosen with probability proportional to ``|ad - bc|``. A system is accepted when
its chaos-game point cloud (``search_points`` points, each axis rescaled into a
``search_size`` square with a 5 % margin, as FractalDB renders) covers at least
``filling_rate`` of the pixels; otherwise a new system is drawn, at most
``max_attempts`` times.

The chaos game runs many independent chains side by side (one numpy step moves
every chain), with a short burn-in per chain, instead of one long sequential
chain: the points are samples of the same attractor.

Instances are FractalDB's 25 weight variants (:func:`ifs_variants`); the render
stage draws them (flips, several drawings per variant).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.common.errors import SpecError
from services.common.seeds import rng_from_seed
from services.common.spec.meshgen import Fractal2DParams

CHAINS = 2000
BURN_IN = 20
MARGIN = 0.05


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
    """

    maps: np.ndarray
    probs: np.ndarray
    filling_rate: float
    seed: int
    rejections: int

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
               chains: int = CHAINS, burn_in: int = BURN_IN) -> np.ndarray:
    """Points on the attractor of an IFS, from ``chains`` parallel chains.

    Parameters
    ----------
    maps : (n, 6) float
    probs : (n,) float
    points : int
        Number of points returned.
    rng : numpy.random.Generator
        Map choices and starting points.

    Returns
    -------
    xy : (points, 2) float (may hold inf/nan for diverging systems)
    """
    chains = min(chains, points)
    steps = -(-points // chains)
    choice = rng.choice(len(maps), size=(burn_in + steps, chains), p=probs)
    xy = rng.uniform(-1.0, 1.0, (chains, 2))
    out = np.empty((steps, chains, 2))
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(burn_in + steps):
            m = maps[choice[t]]
            x, y = xy[:, 0], xy[:, 1]
            xy = np.stack([m[:, 0] * x + m[:, 1] * y + m[:, 4], m[:, 2] * x + m[:, 3] * y + m[:, 5]], axis=1)
            if t >= burn_in:
                out[t - burn_in] = xy
    return out.reshape(-1, 2)[:points]


def filling_rate(xy: np.ndarray, size: int, margin: float = MARGIN) -> float:
    """Fraction of the pixels of a ``size`` x ``size`` image the points cover.

    Each axis is rescaled to the image independently, leaving ``margin`` (a
    fraction of the side) free on every border. Non-finite or degenerate clouds
    cover nothing.
    """
    if not np.isfinite(xy).all():
        return 0.0
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = hi - lo
    if np.any(span <= 1e-12 * np.maximum(np.abs(hi), 1.0)):
        return 0.0
    inner = size * (1.0 - 2.0 * margin)
    pix = np.floor((xy - lo) / span * (inner - 1) + size * margin).astype(np.int64)
    covered = np.zeros(size * size, dtype=bool)
    covered[pix[:, 1] * size + pix[:, 0]] = True
    return float(covered.mean())


def search_ifs(params: Fractal2DParams, seed: int) -> IFSClass:
    """The first system drawn from ``seed`` whose filling rate reaches ``params.filling_rate``.

    Raises
    ------
    SpecError
        After ``max_attempts`` rejected systems (the threshold is too high for
        the coefficient range), naming the fields to change.
    """
    rng = rng_from_seed(seed)
    best = 0.0
    for attempt in range(params.max_attempts):
        n = int(rng.integers(params.maps_range.low, params.maps_range.high + 1))
        maps = rng.uniform(params.coefficient_range.low, params.coefficient_range.high, (n, 6))
        probs = map_probabilities(maps)
        rate = filling_rate(chaos_game(maps, probs, params.search_points, rng), params.search_size)
        if rate >= params.filling_rate:
            return IFSClass(maps=maps, probs=probs, filling_rate=rate, seed=int(seed), rejections=attempt)
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
