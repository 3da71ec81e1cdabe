"""Procedural noise textures, vectorised over pixels (numpy).

- :func:`perlin` — Ken Perlin's *improved* gradient noise (2002): quintic fade
  ``6t^5 - 15t^4 + 10t^3``, gradients picked through a seeded permutation table.
- :func:`sparse_convolution` — Lewis' sparse-convolution noise (1989): random
  impulses scattered on a grid, convolved with a smooth compact kernel.

Both take a ``scale``: features (lattice cells) per image side, so a smaller
scale gives coarser texture (power concentrated at lower spatial frequencies).
"""

from __future__ import annotations

import numpy as np

from services.common.seeds import rng_from_seed

# The 8 gradient directions of improved noise restricted to 2D (unit-ish diagonals and axes).
_GRADIENTS = np.array([[1, 1], [-1, 1], [1, -1], [-1, -1], [1, 0], [-1, 0], [0, 1], [0, -1]], dtype=np.float64)


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Improved Perlin noise at points ``(x, y)`` (lattice units), roughly in [-1, 1].

    Parameters
    ----------
    x, y : (...) float arrays of the same shape
    rng : numpy Generator
        Draws the permutation table (the noise's identity).

    Returns
    -------
    (...) float64
    """
    perm = rng.permutation(256)
    perm = np.concatenate([perm, perm])
    xi, yi = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    xf, yf = x - xi, y - yi
    xi &= 255
    yi &= 255
    u, v = _fade(xf), _fade(yf)

    def corner(dx: int, dy: int) -> np.ndarray:
        g = _GRADIENTS[perm[perm[xi + dx] + yi + dy] & 7]
        return g[..., 0] * (xf - dx) + g[..., 1] * (yf - dy)

    bottom = corner(0, 0) + u * (corner(1, 0) - corner(0, 0))
    top = corner(0, 1) + u * (corner(1, 1) - corner(0, 1))
    return bottom + v * (top - bottom)


def sparse_convolution(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, impulses_per_cell: int = 3) -> np.ndarray:
    """Sparse-convolution noise at ``(x, y)`` (lattice units), zero-mean.

    Each lattice cell holds ``impulses_per_cell`` impulses at uniform positions
    with weights uniform in [-1, 1]; the kernel is ``(1 - r^2)^3`` for r < 1 (cell
    units), so only the 3x3 neighbouring cells contribute.
    """
    xi, yi = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    span_x = (xi.min() - 1, xi.max() + 1)
    span_y = (yi.min() - 1, yi.max() + 1)
    nx, ny = span_x[1] - span_x[0] + 1, span_y[1] - span_y[0] + 1
    offsets = rng.random((ny, nx, impulses_per_cell, 2))
    weights = rng.uniform(-1.0, 1.0, (ny, nx, impulses_per_cell))
    out = np.zeros(np.shape(x), dtype=np.float64)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            cx, cy = xi + dx, yi + dy
            ix, iy = cx - span_x[0], cy - span_y[0]
            for k in range(impulses_per_cell):  # a handful of impulses, each over all pixels at once
                px = cx + offsets[iy, ix, k, 0]
                py = cy + offsets[iy, ix, k, 1]
                r2 = (x - px) ** 2 + (y - py) ** 2
                out += weights[iy, ix, k] * np.clip(1.0 - r2, 0.0, None) ** 3
    return out


NOISE_KINDS = {"perlin": perlin, "sparse_convolution": sparse_convolution}


def noise_image(size: int, scale: float, rng: np.random.Generator, kind: str = "perlin",
                octaves: int = 1) -> np.ndarray:
    """(size, size) noise image normalised to [0, 1].

    Parameters
    ----------
    size : int
        Image side in pixels.
    scale : float
        Lattice cells per image side (> 0); smaller is coarser.
    kind : {"perlin", "sparse_convolution"}
    octaves : int
        Fractal sum of ``octaves`` layers, each at double frequency and half amplitude.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise kind must be one of {sorted(NOISE_KINDS)}, got {kind!r}")
    if not scale > 0:
        raise ValueError(f"noise scale must be > 0, got {scale}")
    coords = (np.arange(size) + 0.5) / size
    x, y = np.meshgrid(coords * scale, coords * scale)
    offset = rng.uniform(0, 256, 2)  # a random window into the lattice
    total = np.zeros((size, size))
    for octave in range(octaves):
        f = 2.0**octave
        total += NOISE_KINDS[kind](x * f + offset[0], y * f + offset[1], rng) / f
    lo, hi = total.min(), total.max()
    return (total - lo) / (hi - lo) if hi > lo else np.zeros_like(total)


def perlin_texture(size: int, scale: float, seed: int) -> np.ndarray:
    """(size, size) Perlin image in [0, 1] from an item seed (used for render backgrounds)."""
    return noise_image(size, scale, rng_from_seed(seed), "perlin", octaves=2)


def radial_power_centroid(image: np.ndarray) -> float:
    """Mean spatial frequency (cycles per image side) weighted by power: larger = finer texture."""
    image = np.asarray(image, float) - np.mean(image)
    power = np.abs(np.fft.fftshift(np.fft.fft2(image))) ** 2
    n = image.shape[0]
    f = np.fft.fftshift(np.fft.fftfreq(n)) * n
    fx, fy = np.meshgrid(f, f)
    radius = np.hypot(fx, fy)
    return float((radius * power).sum() / power.sum())
