"""3D solid noise for textures on surfaces, compiled with numba (the noise-scene renderer's inner loop).

- :func:`perlin3` — Ken Perlin's *improved noise* (SIGGRAPH 2002), transcribed from his reference
  implementation (https://mrl.cs.nyu.edu/~perlin/noise/): quintic fade ``6t^5 - 15t^4 + 10t^3``,
  the 12 edge gradients (16 with 4 repeated) picked by ``hash & 15``. Zero at every lattice point;
  values lie in [-1, 1]. The permutation table is drawn per texture from its seed (the reference
  uses one fixed table), so every object has its own noise.
- :func:`sparse3` — sparse convolution noise (Lewis 1989) as Frisvad and Wyvill ("Fast high-quality
  noise", GRAPHITE 2007) evaluate it: impulses at random positions in each unit lattice cell, found
  through a hash of the cell (no stored field, so any point in space can be queried), with random
  weights in [-1, 1], convolved with a cubic kernel of radius 1 cell. The kernel is Wyvill's cubic
  (in r^2) "soft object" field function ``C(s) = 1 - 22/9 s + 17/9 s^2 - 4/9 s^3`` with
  ``s = r^2 / R^2`` (C(0) = 1, C(1) = 0 with zero slope): smooth and compactly supported, so only the
  27 neighbouring cells can contribute (and those farther than R from the point are skipped).
  Divided by :data:`SPARSE_NORM` so its spread matches Perlin's; clipped to [-1, 1].

The surface renderer (:func:`render_scene`) is one numba kernel over pixels: ray-cast every
ellipsoid whose bounding box covers the pixel, keep the nearest, evaluate the noise *at the 3D
surface point* in the object's own frame (the unit sphere the ellipsoid is stretched from) times
its noise scale r, then Phong shading. The texture therefore sticks to the surface: moving an
object moves its texture with it. Written here (not taken from a library) because no maintained
Python package evaluates improved Perlin and sparse-convolution noise at arbitrary 3D points at
this speed; numba compiles it once per machine (``cache=True``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: Impulses per lattice cell of sparse convolution noise.
SPARSE_IMPULSES = 3
#: Sparse noise is divided by this so that its standard deviation matches improved Perlin noise's (about
#: 0.19 in 3D, measured on 10^6 random points); see tests/render/test_noise3d.py.
SPARSE_NORM = 2.4
#: Noise kinds as the kernel knows them.
KIND_CODES = {"perlin": 0, "sparse_convolution": 1}
#: Texture contrast: albedo = colour * (TEXTURE_BASE + (1 - TEXTURE_BASE) * t), t = (noise + 1) / 2 in [0, 1].
TEXTURE_BASE = 0.45


def permutation_table(rng: np.random.Generator) -> np.ndarray:
    """(512,) int64: a random permutation of 0..255, repeated (Perlin's ``p[]``)."""
    perm = rng.permutation(256).astype(np.int64)
    return np.concatenate([perm, perm])


def impulse_table(rng: np.random.Generator, impulses: int = SPARSE_IMPULSES) -> np.ndarray:
    """(256, impulses, 4) float64: per cell hash, each impulse's position in the cell (x, y, z in [0, 1))
    and weight in [-1, 1]."""
    table = rng.random((256, impulses, 4))
    table[..., 3] = table[..., 3] * 2.0 - 1.0
    return table


@njit(cache=True, inline="always")
def _fade(t):
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


@njit(cache=True, inline="always")
def _lerp(t, a, b):
    return a + t * (b - a)


#: Perlin's 16 gradients (the 12 cube edges, 4 of them twice), in the order his ``grad(hash & 15)`` picks them;
#: looked up from a table rather than branched on (random branches cost more than the arithmetic).
GRADIENTS = np.array([[1, 1, 0], [-1, 1, 0], [1, -1, 0], [-1, -1, 0], [1, 0, 1], [-1, 0, 1], [1, 0, -1], [-1, 0, -1],
                      [0, 1, 1], [0, -1, 1], [0, 1, -1], [0, -1, -1], [1, 1, 0], [0, -1, 1], [-1, 1, 0], [0, -1, -1]],
                     dtype=np.float64)


@njit(cache=True, inline="always")
def _grad(h, x, y, z):
    g = GRADIENTS[h & 15]
    return g[0] * x + g[1] * y + g[2] * z


@njit(cache=True)
def perlin3(x, y, z, perm):
    """Improved Perlin noise at (x, y, z) with permutation table ``perm`` (512 entries)."""
    fx, fy, fz = np.floor(x), np.floor(y), np.floor(z)
    xi, yi, zi = np.int64(fx) & 255, np.int64(fy) & 255, np.int64(fz) & 255
    x, y, z = x - fx, y - fy, z - fz
    u, v, w = _fade(x), _fade(y), _fade(z)
    a = perm[xi] + yi
    aa, ab = perm[a] + zi, perm[a + 1] + zi
    b = perm[xi + 1] + yi
    ba, bb = perm[b] + zi, perm[b + 1] + zi
    return _lerp(w, _lerp(v, _lerp(u, _grad(perm[aa], x, y, z), _grad(perm[ba], x - 1, y, z)),
                          _lerp(u, _grad(perm[ab], x, y - 1, z), _grad(perm[bb], x - 1, y - 1, z))),
                 _lerp(v, _lerp(u, _grad(perm[aa + 1], x, y, z - 1), _grad(perm[ba + 1], x - 1, y, z - 1)),
                       _lerp(u, _grad(perm[ab + 1], x, y - 1, z - 1), _grad(perm[bb + 1], x - 1, y - 1, z - 1))))


@njit(cache=True)
def sparse3(x, y, z, perm, impulses):
    """Sparse convolution noise at (x, y, z): impulses hashed per cell (``perm``, ``impulses`` from
    :func:`impulse_table`), Wyvill's cubic kernel of radius 1; divided by SPARSE_NORM, clipped to [-1, 1]."""
    fx, fy, fz = np.floor(x), np.floor(y), np.floor(z)
    ix, iy, iz = np.int64(fx), np.int64(fy), np.int64(fz)
    tx, ty, tz = x - fx, y - fy, z - fz
    count = impulses.shape[1]
    total = 0.0
    for dz in range(-1, 2):
        gz = tz if dz < 0 else (0.0 if dz == 0 else 1.0 - tz)  # distance to that cell along z
        for dy in range(-1, 2):
            gy = ty if dy < 0 else (0.0 if dy == 0 else 1.0 - ty)
            for dx in range(-1, 2):
                gx = tx if dx < 0 else (0.0 if dx == 0 else 1.0 - tx)
                if gx * gx + gy * gy + gz * gz >= 1.0:
                    continue  # the whole cell lies beyond the kernel's reach
                cx, cy, cz = ix + dx, iy + dy, iz + dz
                h = perm[perm[perm[cx & 255] + (cy & 255)] + (cz & 255)]
                for k in range(count):
                    ddx = cx + impulses[h, k, 0] - x
                    ddy = cy + impulses[h, k, 1] - y
                    ddz = cz + impulses[h, k, 2] - z
                    # C(s) = (1 - s)^2 (1 - 4/9 s), zero from s = 1 on (min: no unpredictable branch)
                    s = min(ddx * ddx + ddy * ddy + ddz * ddz, 1.0)
                    total += impulses[h, k, 3] * ((1.0 - s) * (1.0 - s) * (1.0 - s * (4.0 / 9.0)))
    value = total / SPARSE_NORM
    return min(1.0, max(-1.0, value))


@njit(cache=True)
def perlin3_tables(x, y, z, perm, impulses):
    """:func:`perlin3` with the same arguments as :func:`sparse3` (``impulses`` unused)."""
    return perlin3(x, y, z, perm)


#: The noise functions by name; :func:`render_scene` is compiled once for each.
NOISE_FUNCTIONS = {"perlin": perlin3_tables, "sparse_convolution": sparse3}


@njit(cache=True)
def _noise(kind, x, y, z, perm, impulses):
    if kind == 0:
        return perlin3(x, y, z, perm)
    return sparse3(x, y, z, perm, impulses)


@njit(cache=True)
def noise_at(kind, points, perm, impulses):
    """Noise of kind code ``kind`` at (n, 3) ``points``: (n,) float64."""
    out = np.empty(points.shape[0])
    for i in range(points.shape[0]):
        out[i] = _noise(kind, points[i, 0], points[i, 1], points[i, 2], perm, impulses)
    return out


@njit(cache=True, inline="always")
def _byte(value):
    """[0, 1] -> 0..255, rounded half up; out-of-range values clipped."""
    return np.uint8(np.floor(min(max(value, 0.0), 1.0) * 255.0 + 0.5))


@njit(cache=True)
def render_scene(size, noise, bg_scale, bg_offset, bg_perm, bg_impulses, centres, quadrics, to_local, boxes,
                 noise_scales, offsets, perms, impulses, colours, kd, ks, shininess, labels_in, ambient, light, half,
                 bg_tint, rgb, labels):
    """Draw one scene into ``rgb`` (size, size, 3) uint8 and ``labels`` (size, size) uint16.

    Orthographic camera looking down -z at [0, 1]^2 (image units); ``light`` the unit direction to the light,
    ``half`` the unit half vector between it and the viewer (+z); Phong shading.
    Per object o: ``centres[o]`` (3,), ``quadrics[o]`` (3, 3) with (p - c)^T Q (p - c) = 1 on the surface,
    ``to_local[o]`` (3, 3) maps p - c to the unit sphere, ``boxes[o]`` = (col0, col1, row0, row1) pixel
    bounds, ``offsets[o]`` (3,) a seeded shift into the noise field, ``perms[o]`` and ``impulses[o]``
    its noise tables. Background: noise at (u, v, 0) * bg_scale + bg_offset (u, v in [0, 1]), times
    ``bg_tint`` (3,).
    """
    n = centres.shape[0]
    best = np.full((size, size), -1, dtype=np.int16)  # the front object of each pixel (-1: none)
    best_t = np.zeros((size, size))  # its surface height above its centre
    for o in range(n):  # pass 1: a z-buffer over each object's pixel box
        q00, q01, q02, q11, q12, q22 = (quadrics[o, 0, 0], quadrics[o, 0, 1], quadrics[o, 0, 2], quadrics[o, 1, 1],
                                        quadrics[o, 1, 2], quadrics[o, 2, 2])
        for row in range(boxes[o, 2], boxes[o, 3] + 1):
            dy = (row + 0.5) / size - centres[o, 1]
            for col in range(boxes[o, 0], boxes[o, 1] + 1):
                dx = (col + 0.5) / size - centres[o, 0]
                qb = q02 * dx + q12 * dy
                qc = q00 * dx * dx + 2.0 * q01 * dx * dy + q11 * dy * dy - 1.0
                disc = qb * qb - q22 * qc
                if disc < 0.0:
                    continue
                t = (-qb + np.sqrt(disc)) / q22  # the root nearer the camera (+z)
                front = best[row, col]
                if front < 0 or centres[o, 2] + t > centres[front, 2] + best_t[row, col]:
                    best[row, col], best_t[row, col] = o, t
    for row in range(size):  # pass 2: texture and shade the winner of each pixel
        py = (row + 0.5) / size
        for col in range(size):
            px = (col + 0.5) / size
            o = best[row, col]
            if o < 0:
                g = 0.5 + 0.5 * noise(px * bg_scale + bg_offset[0], py * bg_scale + bg_offset[1],
                                       bg_offset[2], bg_perm, bg_impulses)
                for c in range(3):
                    rgb[row, col, c] = _byte(g * bg_tint[c])
                labels[row, col] = 0
                continue
            dx, dy, dz = px - centres[o, 0], py - centres[o, 1], best_t[row, col]
            nx = quadrics[o, 0, 0] * dx + quadrics[o, 0, 1] * dy + quadrics[o, 0, 2] * dz
            ny = quadrics[o, 1, 0] * dx + quadrics[o, 1, 1] * dy + quadrics[o, 1, 2] * dz
            nz = quadrics[o, 2, 0] * dx + quadrics[o, 2, 1] * dy + quadrics[o, 2, 2] * dz
            norm = np.sqrt(nx * nx + ny * ny + nz * nz)
            if norm > 1e-12:
                nx, ny, nz = nx / norm, ny / norm, nz / norm
            r = noise_scales[o]
            lx = (to_local[o, 0, 0] * dx + to_local[o, 0, 1] * dy + to_local[o, 0, 2] * dz) * r + offsets[o, 0]
            ly = (to_local[o, 1, 0] * dx + to_local[o, 1, 1] * dy + to_local[o, 1, 2] * dz) * r + offsets[o, 1]
            lz = (to_local[o, 2, 0] * dx + to_local[o, 2, 1] * dy + to_local[o, 2, 2] * dz) * r + offsets[o, 2]
            texture = 0.5 + 0.5 * noise(lx, ly, lz, perms[o], impulses[o])
            lambert = max(nx * light[0] + ny * light[1] + nz * light[2], 0.0)
            cosine = max(nx * half[0] + ny * half[1] + nz * half[2], 0.0)
            specular = ks[o] * cosine ** shininess[o] if ks[o] > 0.0 and cosine > 0.0 else 0.0
            shade = (TEXTURE_BASE + (1.0 - TEXTURE_BASE) * texture) * (ambient + kd[o] * lambert)
            for c in range(3):
                rgb[row, col, c] = _byte(colours[o, c] * shade + specular)
            labels[row, col] = labels_in[o]
