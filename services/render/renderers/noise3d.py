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
  27 neighbouring cells can contribute. Divided by :data:`SPARSE_NORM` so its spread matches
  Perlin's; clipped to [-1, 1].

The surface renderer (:func:`render_scene`) is a numba kernel over pixels: ray-cast every ellipsoid
whose bounding box covers the pixel, keep the nearest, evaluate the noise *at the 3D surface point*
in the object's own frame (the unit sphere the ellipsoid is stretched from) times its noise scale r,
then Phong shading. The texture therefore sticks to the surface: moving an object moves its texture
with it. For speed the background plane is drawn in one piece (:func:`background_noise`: Perlin
row by row, sparse noise splatted impulse by impulse) and sparse noise on objects tile by tile
(:func:`sparse_tiles`); each is tested equal to the per-point functions. Written here (not taken from a library) because no maintained
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


@njit(cache=True, fastmath=True)
def _sum_kernels(x, y, z, buf, m):
    """Sum of w C(|p - x_i|^2) over the ``m`` impulses (x, y, z, w) in ``buf`` (4, >= m); C(s) = (1 - s)^2 (1 - 4/9 s)
    = Wyvill's cubic, zero from s = 1 on (``min``: no branch, so the loop vectorises)."""
    total = 0.0
    for i in range(m):
        dx, dy, dz = buf[0, i] - x, buf[1, i] - y, buf[2, i] - z
        s = min(dx * dx + dy * dy + dz * dz, 1.0)
        total += buf[3, i] * ((1.0 - s) * (1.0 - s) * (1.0 - s * (4.0 / 9.0)))
    return total


@njit(cache=True, fastmath=True)
def _sum_around(x, y, z, perm, impulses):
    """Sum of w C(|p - x_i|^2) over every impulse of the 27 cells around (x, y, z): those beyond the kernel radius
    add C(1) = 0 (``min``), which costs less than testing them (about 160 ns a point here)."""
    cx, cy, cz = np.int64(np.floor(x)), np.int64(np.floor(y)), np.int64(np.floor(z))
    total = 0.0
    for dx in range(-1, 2):
        gx = cx + dx
        hx = perm[gx & 255]
        for dy in range(-1, 2):
            gy = cy + dy
            hxy = perm[hx + (gy & 255)]
            for dz in range(-1, 2):
                gz = cz + dz
                h = perm[hxy + (gz & 255)]
                for k in range(impulses.shape[1]):
                    ax = gx + impulses[h, k, 0] - x
                    ay = gy + impulses[h, k, 1] - y
                    az = gz + impulses[h, k, 2] - z
                    s = min(ax * ax + ay * ay + az * az, 1.0)
                    total += impulses[h, k, 3] * ((1.0 - s) * (1.0 - s) * (1.0 - s * (4.0 / 9.0)))
    return total


@njit(cache=True)
def sparse3(x, y, z, perm, impulses):
    """Sparse convolution noise at (x, y, z) (see the module docstring), divided by :data:`SPARSE_NORM` and clipped
    to [-1, 1]. The renderer evaluates whole backgrounds and tiles of surface points at once
    (:func:`background_sparse`, :func:`sparse_tiles`); this is the per-point definition they are tested against."""
    return min(1.0, max(-1.0, _sum_around(x, y, z, perm, impulses) / SPARSE_NORM))


@njit(cache=True)
def _perlin_point(x, y, z, perm, impulses):
    """:func:`perlin3` with the arguments of :func:`sparse3` (``impulses`` unused), so both fit one kernel."""
    return perlin3(x, y, z, perm)


#: The per-point noise functions by name; :func:`render_scene` is compiled once for each.
NOISE_FUNCTIONS = {"perlin": _perlin_point, "sparse_convolution": sparse3}


@njit(cache=True)
def _noise_at(noise, points, perm, impulses):
    out = np.empty(points.shape[0])
    for i in range(points.shape[0]):
        out[i] = noise(points[i, 0], points[i, 1], points[i, 2], perm, impulses)
    return out


def noise_at(kind: int, points: np.ndarray, perm: np.ndarray, impulses: np.ndarray) -> np.ndarray:
    """Noise of kind code ``kind`` (:data:`KIND_CODES`) at (n, 3) ``points``: (n,) float64."""
    name = {code: name for name, code in KIND_CODES.items()}[kind]
    return _noise_at(NOISE_FUNCTIONS[name], np.ascontiguousarray(points, dtype=np.float64), perm, impulses)


@njit(cache=True)
def background_perlin(size, scale, offset, perm, out):
    """Into ``out`` (size, size): :func:`perlin3` at (u * scale + offset[0], v * scale + offset[1], offset[2]) for
    the pixel centres (u, v) in [0, 1]^2 (the background plane), with the same arithmetic per point, bit for
    bit; faster because the plane fixes z and each row fixes y, so their lattice hashes and fades are computed
    once per row, and the x hashes and gradients once per run of pixels in one lattice cell, whose inner
    loop then has no table lookups or branches (it vectorises)."""
    z = offset[2]
    fz = np.floor(z)
    zi = np.int64(fz) & 255
    zf = z - fz
    w = _fade(zf)
    xs = np.empty(size)
    for col in range(size):
        xs[col] = (col + 0.5) / size * scale + offset[0]
    g = np.empty((8, 3))
    for row in range(size):
        y = (row + 0.5) / size * scale + offset[1]
        fy = np.floor(y)
        yi = np.int64(fy) & 255
        yf = y - fy
        v = _fade(yf)
        start = 0
        while start < size:
            fx = np.floor(xs[start])
            stop = start + 1
            while stop < size and np.floor(xs[stop]) == fx:  # the run of pixels in this lattice cell
                stop += 1
            xi = np.int64(fx) & 255
            a = perm[xi] + yi
            aa, ab = perm[a] + zi, perm[a + 1] + zi
            b = perm[xi + 1] + yi
            ba, bb = perm[b] + zi, perm[b + 1] + zi
            for c, h in enumerate((perm[aa], perm[ba], perm[ab], perm[bb],
                                   perm[aa + 1], perm[ba + 1], perm[ab + 1], perm[bb + 1])):
                g[c, 0], g[c, 1], g[c, 2] = GRADIENTS[h & 15, 0], GRADIENTS[h & 15, 1], GRADIENTS[h & 15, 2]
            _perlin_run(xs, start, stop, fx, yf, zf, v, w, g, out[row])
            start = stop


@njit(cache=True, inline="always")
def _dot(g, c, x, y, z):
    return g[c, 0] * x + g[c, 1] * y + g[c, 2] * z  # the order of _grad's sum, so the results are equal


@njit(cache=True)
def _perlin_run(xs, start, stop, fx, yf, zf, v, w, g, out_row):
    """:func:`perlin3` along xs[start:stop] (one lattice cell; y, z and the corner gradients ``g`` fixed)."""
    for col in range(start, stop):
        xf = xs[col] - fx
        u = _fade(xf)
        out_row[col] = _lerp(w, _lerp(v, _lerp(u, _dot(g, 0, xf, yf, zf), _dot(g, 1, xf - 1, yf, zf)),
                                      _lerp(u, _dot(g, 2, xf, yf - 1, zf), _dot(g, 3, xf - 1, yf - 1, zf))),
                             _lerp(v, _lerp(u, _dot(g, 4, xf, yf, zf - 1), _dot(g, 5, xf - 1, yf, zf - 1)),
                                   _lerp(u, _dot(g, 6, xf, yf - 1, zf - 1), _dot(g, 7, xf - 1, yf - 1, zf - 1))))


@njit(cache=True, fastmath=True)
def background_sparse(size, scale, offset, perm, impulses, out):
    """Into ``out`` (size, size): :func:`sparse3` on the background plane (as :func:`background_perlin`), equal to
    it up to the order of the sums (1e-15). Splatted rather than gathered: every impulse within the kernel
    radius of the plane adds its cubic kernel to the pixels of its disc on it, so each pixel gets exactly the
    terms that reach it (about 12 on average) with no per-pixel search or cache; the inner loop runs along a
    row of pixels and vectorises."""
    out[:, :] = 0.0
    coords = np.empty(size)
    for i in range(size):
        coords[i] = (i + 0.5) / size
    xs = coords * scale + offset[0]
    ys = coords * scale + offset[1]
    z = offset[2]
    cz = np.int64(np.floor(z))
    to_pixel = size / scale  # noise units -> pixels
    for gx in range(np.int64(np.floor(xs[0])) - 1, np.int64(np.floor(xs[size - 1])) + 2):
        hx = perm[gx & 255]
        for gy in range(np.int64(np.floor(ys[0])) - 1, np.int64(np.floor(ys[size - 1])) + 2):
            hxy = perm[hx + (gy & 255)]
            for gz in range(cz - 1, cz + 2):
                h = perm[hxy + (gz & 255)]
                for k in range(impulses.shape[1]):
                    px, py, pz = gx + impulses[h, k, 0], gy + impulses[h, k, 1], gz + impulses[h, k, 2]
                    dz = pz - z
                    dz2 = dz * dz
                    if dz2 >= 1.0:
                        continue
                    weight = impulses[h, k, 3]
                    reach = np.sqrt(1.0 - dz2)  # the disc's radius on the plane, noise units
                    r0 = max(0, np.int64(np.floor((py - reach - offset[1]) * to_pixel - 0.5)) - 1)
                    r1 = min(size - 1, np.int64(np.ceil((py + reach - offset[1]) * to_pixel - 0.5)) + 1)
                    for row in range(r0, r1 + 1):
                        dy = py - ys[row]
                        rest = 1.0 - dz2 - dy * dy
                        if rest <= 0.0:
                            continue
                        chord = np.sqrt(rest)
                        c0 = max(0, np.int64(np.floor((px - chord - offset[0]) * to_pixel - 0.5)) - 1)
                        c1 = min(size - 1, np.int64(np.ceil((px + chord - offset[0]) * to_pixel - 0.5)) + 1)
                        base = dy * dy + dz2
                        for col in range(c0, c1 + 1):
                            dx = px - xs[col]
                            s = min(dx * dx + base, 1.0)
                            out[row, col] += weight * ((1.0 - s) * (1.0 - s) * (1.0 - s * (4.0 / 9.0)))
    for row in range(size):
        for col in range(size):
            out[row, col] = min(1.0, max(-1.0, out[row, col] / SPARSE_NORM))


def background_noise(kind: str, size: int, scale: float, offset: np.ndarray, perm: np.ndarray,
                     impulses: np.ndarray) -> np.ndarray:
    """(size, size) noise of ``kind`` on the background plane: the value at pixel (row, col) is the noise at
    ((col + 0.5) / size * scale + offset[0], (row + 0.5) / size * scale + offset[1], offset[2])."""
    out = np.empty((size, size))
    if kind == "perlin":
        background_perlin(size, float(scale), offset, perm, out)
    else:
        background_sparse(size, float(scale), offset, perm, impulses, out)
    return out


#: From this many pixels per lattice cell up, sparse noise on an object is evaluated tile by tile
#: (:func:`sparse_tiles`); below it, per pixel (:func:`sparse3`).
TILES_FROM_PIXELS = 0.5


def tile_pixels(pixels_per_cell: float) -> int:
    """Tile side for :func:`sparse_tiles` (0: evaluate per pixel): about one lattice cell, at least 3 and at
    most 16 pixels. Tuned on the published scene mix at 512 x 512 (sides of ppc/3, ppc/2, ppc, 2 ppc and
    fixed 4-8 tried): this choice drew the sparse scenes in 19 ms against 21-29 ms for the others and
    26 ms per pixel with one- and two-level impulse caches (removed since)."""
    if pixels_per_cell < TILES_FROM_PIXELS:
        return 0
    return int(min(16, max(3, round(pixels_per_cell))))


@njit(cache=True)
def sparse_tiles(size, o, best, best_t, centre, to_local, noise_scale, offset, perm, impulses, box, tile, out):
    """Write into ``out`` the sparse noise (:func:`sparse3`'s value) at the surface point of every pixel
    of object ``o`` (``best == o``) within its pixel ``box``, ``tile`` x ``tile`` pixels at a time: one gather
    of the impulses within the kernel radius of the tile's surface points' bounding box, then each point
    sums over that list (the same terms as per point, in another order: equal to 1e-12). Surface points
    are computed exactly as :func:`render_scene` computes them."""
    points = np.empty((tile * tile, 3))
    where = np.empty((tile * tile, 2), dtype=np.int64)
    gathered = np.empty((4, 64))
    for tr in range(box[2], box[3] + 1, tile):
        for tc in range(box[0], box[1] + 1, tile):
            m = 0
            lo0 = lo1 = lo2 = np.inf
            hi0 = hi1 = hi2 = -np.inf
            for row in range(tr, min(tr + tile, box[3] + 1)):
                py = (row + 0.5) / size
                for col in range(tc, min(tc + tile, box[1] + 1)):
                    if best[row, col] != o:
                        continue
                    px = (col + 0.5) / size
                    dx, dy, dz = px - centre[0], py - centre[1], best_t[row, col]
                    x = (to_local[0, 0] * dx + to_local[0, 1] * dy + to_local[0, 2] * dz) * noise_scale + offset[0]
                    y = (to_local[1, 0] * dx + to_local[1, 1] * dy + to_local[1, 2] * dz) * noise_scale + offset[1]
                    z = (to_local[2, 0] * dx + to_local[2, 1] * dy + to_local[2, 2] * dz) * noise_scale + offset[2]
                    points[m, 0], points[m, 1], points[m, 2] = x, y, z
                    where[m, 0], where[m, 1] = row, col
                    lo0, lo1, lo2 = min(lo0, x), min(lo1, y), min(lo2, z)
                    hi0, hi1, hi2 = max(hi0, x), max(hi1, y), max(hi2, z)
                    m += 1
            if m == 0:
                continue
            # an impulse in cell g lies in [g, g + 1): only cells floor(lo) - 1 .. floor(hi) + 1 can reach the box
            gx0, gx1 = np.int64(np.floor(lo0)) - 1, np.int64(np.floor(hi0)) + 1
            gy0, gy1 = np.int64(np.floor(lo1)) - 1, np.int64(np.floor(hi1)) + 1
            gz0, gz1 = np.int64(np.floor(lo2)) - 1, np.int64(np.floor(hi2)) + 1
            need = (gx1 - gx0 + 1) * (gy1 - gy0 + 1) * (gz1 - gz0 + 1) * impulses.shape[1]
            if need > gathered.shape[1]:
                gathered = np.empty((4, need))
            count = 0
            for gx in range(gx0, gx1 + 1):
                hx = perm[gx & 255]
                for gy in range(gy0, gy1 + 1):
                    hxy = perm[hx + (gy & 255)]
                    for gz in range(gz0, gz1 + 1):
                        h = perm[hxy + (gz & 255)]
                        for k in range(impulses.shape[1]):
                            ix, iy, iz = gx + impulses[h, k, 0], gy + impulses[h, k, 1], gz + impulses[h, k, 2]
                            ex = max(lo0 - ix, 0.0, ix - hi0)
                            ey = max(lo1 - iy, 0.0, iy - hi1)
                            ez = max(lo2 - iz, 0.0, iz - hi2)
                            gathered[0, count], gathered[1, count], gathered[2, count] = ix, iy, iz
                            gathered[3, count] = impulses[h, k, 3]
                            count += ex * ex + ey * ey + ez * ez < 1.0  # kept by advancing: no branch to mispredict
            for i in range(m):
                value = _sum_kernels(points[i, 0], points[i, 1], points[i, 2], gathered, count) / SPARSE_NORM
                out[where[i, 0], where[i, 1]] = min(1.0, max(-1.0, value))


@njit(cache=True)
def label_counts(labels):
    """Pixels per label value of a uint16 label map ((max + 1,) int64). Counted run by run: label maps are
    long runs of one value, and adding 1 per pixel to the same counter waits on the previous add (that, or
    ``np.bincount``'s int64 copy of the map, takes a 512 x 512 scene about 0.5-0.8 ms)."""
    flat = labels.ravel()
    top = 0
    for value in flat:
        top = max(top, value)
    counts = np.zeros(np.int64(top) + 1, dtype=np.int64)
    if flat.size == 0:
        return counts
    current, run = flat[0], 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts[current] += run
            current, run = value, 1
    counts[current] += run
    return counts


@njit(cache=True, inline="always")
def _byte(value):
    """[0, 1] -> 0..255, rounded half up; out-of-range values clipped."""
    return np.uint8(np.floor(min(max(value, 0.0), 1.0) * 255.0 + 0.5))


@njit(cache=True)
def render_scene(size, noise, background, centres, quadrics, to_local, boxes, noise_scales, offsets, tiles, perms,
                 impulses, colours, kd, ks, shininess, labels_in, ambient, light, half, bg_tint, rgb, labels):
    """Draw one scene into ``rgb`` (size, size, 3) uint8 and ``labels`` (size, size) uint16.

    ``noise`` is one of :data:`NOISE_FUNCTIONS` (per pixel); ``tiles[o]`` > 0: object o's sparse noise evaluated
    in tiles of that side first (:func:`sparse_tiles`); ``background`` (size, size) the noise behind the objects
    (:func:`background_noise`).

    Orthographic camera looking down -z at [0, 1]^2 (image units); ``light`` the unit direction to the light,
    ``half`` the unit half vector between it and the viewer (+z); Phong shading.
    Per object o: ``centres[o]`` (3,), ``quadrics[o]`` (3, 3) with (p - c)^T Q (p - c) = 1 on the surface,
    ``to_local[o]`` (3, 3) maps p - c to the unit sphere, ``boxes[o]`` = (col0, col1, row0, row1) pixel
    bounds, ``offsets[o]`` (3,) a seeded shift into the noise field, ``perms[o]`` and ``impulses[o]``
    its noise tables. Background: ``0.5 + 0.5 * background`` times ``bg_tint`` (3,).
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
    tiled = np.empty((size, size) if np.any(tiles > 0) else (1, 1))  # noise of the objects evaluated in tiles
    for o in range(n):
        if tiles[o] > 0:
            sparse_tiles(size, o, best, best_t, centres[o], to_local[o], noise_scales[o], offsets[o], perms[o],
                         impulses[o], boxes[o], tiles[o], tiled)
    for row in range(size):  # pass 2: texture and shade the winner of each pixel
        py = (row + 0.5) / size
        for col in range(size):
            px = (col + 0.5) / size
            o = best[row, col]
            if o < 0:
                g = 0.5 + 0.5 * background[row, col]
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
            if tiles[o] > 0:
                texture = 0.5 + 0.5 * tiled[row, col]
            else:
                texture = 0.5 + 0.5 * noise(lx, ly, lz, perms[o], impulses[o])
            lambert = max(nx * light[0] + ny * light[1] + nz * light[2], 0.0)
            cosine = max(nx * half[0] + ny * half[1] + nz * half[2], 0.0)
            specular = ks[o] * cosine ** shininess[o] if ks[o] > 0.0 and cosine > 0.0 else 0.0
            shade = (TEXTURE_BASE + (1.0 - TEXTURE_BASE) * texture) * (ambient + kd[o] * lambert)
            for c in range(3):
                rgb[row, col, c] = _byte(colours[o, c] * shade + specular)
            labels[row, col] = labels_in[o]
