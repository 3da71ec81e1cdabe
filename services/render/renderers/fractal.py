"""FractalDB images from iterated function systems, vectorised across chains and images.

FractalDB (Kataoka et al., 2020) draws a class's IFS with the chaos game: starting
from the origin, apply a map chosen with probability ``probs`` to the current
point, repeatedly; the visited points are rescaled by their min/max into the
image and each is pasted as a 3x3 patch with its own random on/off pattern
(one of the 511 non-empty 9-bit masks), grey (127) on black.

Where the points land is FractalDB's (``fractal_renderer/ifs_function.py`` of
hirokatsukataoka16/FractalDB-Pretrained-ResNet-PyTorch, run by ``exe.sh`` at
``--image_size_x=362`` with ``make_fractaldb.py``'s default ``--pad_size_x=6``):
``__rescale`` maps each axis to ``uint16((v - min) / (max - min) * (362 - 2*6) + 6)``
(truncated; pixels 6..356; the cloud holds the origin, its chain's first point,
so ``min <= 0`` and FractalDB's "shift when negative" is a shift by the
minimum), ``draw_patch`` pastes each patch with its top-left corner at
``(x + 1, y + 1)`` (pixels ``x+1 .. x+3``), and the image is then flipped top to
bottom (y up). Here ``pad`` and ``image_size`` are settings (defaults 6 and 362)
and the origin is added to every cloud, as in FractalDB.

Instead of one long Python loop over points, we run many independent chains of
each system in parallel (``chains`` per image, every image of a batch at once):
one numpy step advances every chain of every image by one map application,
selecting each chain's coefficients by fancy indexing into the stacked map
table. Each chain drops its first ``burn_in`` points (it starts at the origin,
off the attractor).

Rasterising without a loop over points: FractalDB pastes whole patches, so a
pixel ends up with one bit of the *last* patch covering it, and each bit of a
random non-empty mask is on with probability 256/511. We scatter the points into
an occupancy image, dilate it by the patch's square (9 shifted ORs) to get the
covered pixels, and keep each covered pixel with that probability, drawn from the
image's own generator: the same per-pixel distribution, in a few array passes.

Variants: ``services.meshgen.fractal2d.ifs_variants`` gives 25 coefficient
variants per class (the original plus one coefficient scaled by 1±w, 1±2w);
each is drawn under 4 flips (none, horizontal, vertical, both).
"""

from __future__ import annotations

import numpy as np

from services.common.seeds import rng_from_seed

FLIPS = ("none", "horizontal", "vertical", "both")
GREY = 127  # FractalDB's grey level
PAD = 6  # FractalDB's make_fractaldb.py --pad_size_x/--pad_size_y default


def patch_bit_probability(patch: int) -> float:
    """P(a given cell is on) for a uniformly random non-empty patch x patch on/off mask."""
    cells = patch * patch
    return 2.0 ** (cells - 1) / (2.0**cells - 1)


def _validate_system(maps: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 2 or maps.shape[1] != 6 or len(maps) == 0:
        raise ValueError(f"IFS maps must have shape (n, 6) with n >= 1, got {maps.shape}")
    if not np.all(np.isfinite(maps)):
        raise ValueError("IFS maps contain NaN or infinite coefficients")
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(maps),) or np.any(probs < 0) or probs.sum() <= 0:
        raise ValueError(f"IFS probs must be {len(maps)} non-negative numbers with a positive sum, got {probs}")
    return maps, probs / probs.sum()


def default_probs(maps: np.ndarray) -> np.ndarray:
    """FractalDB's map probabilities: proportional to |det| of each linear part."""
    maps = np.asarray(maps, dtype=np.float64)
    det = np.abs(maps[:, 0] * maps[:, 3] - maps[:, 1] * maps[:, 2])
    return det / det.sum() if det.sum() > 0 else np.full(len(maps), 1.0 / len(maps))


LUT_BITS = 12  # map choice through a 4,096-entry table per system (probabilities to 2.4e-4; small enough to stay in cache)


def _choice_tables(probs: list[np.ndarray], offsets: np.ndarray) -> np.ndarray:
    """(systems, 2**LUT_BITS) int32: uniform LUT_BITS-bit draw -> global map index (inverse CDF table)."""
    levels = (np.arange(1 << LUT_BITS) + 0.5) / (1 << LUT_BITS)
    return np.stack([offset + np.minimum(np.searchsorted(np.cumsum(p), levels, side="right"), len(p) - 1)
                     for p, offset in zip(probs, offsets)]).astype(np.int32)


def chaos_game(systems: list[tuple[np.ndarray, np.ndarray]], points: int, rngs: list[np.random.Generator], *,
               chains: int = 1024, burn_in: int = 16, device: str | None = None):
    """Chaos-game points of several systems at once.

    Parameters
    ----------
    systems : list of (maps (n_i, 6) float, probs (n_i,) float)
        Map ``(a, b, c, d, e, f)``: ``x' = a x + b y + e``, ``y' = c x + d y + f``.
    points : int
        Points per system (kept after burn-in; rounded up to whole steps of all chains).
    rngs : list of numpy Generator
        One per system: each system's map choices come from its own generator, so
        an image is reproducible alone whatever batch it was drawn in.
    chains : int
        Independent chains per system.
    burn_in : int
        Leading points dropped from every chain.
    device : str, optional
        A torch device (e.g. ``"cuda"``): iterate there with torch. The map choices are
        still drawn by the numpy generators, so the points match the numpy path.

    Returns
    -------
    xs, ys : (len(systems), steps * chains) float32
        Point coordinates per system (numpy arrays; torch tensors on ``device`` when given);
        may be non-finite for divergent systems.
    """
    checked = [_validate_system(m, p) for m, p in systems]
    n_sys = len(checked)
    if len(rngs) != n_sys:
        raise ValueError(f"one generator per system needed: {n_sys} systems, {len(rngs)} generators")
    chains = max(1, min(chains, points))
    steps = -(-points // chains)
    table = np.concatenate([m for m, _ in checked]).astype(np.float32)  # (total maps, 6)
    a, b, c, d, e, f = (np.ascontiguousarray(col) for col in table.T)
    offsets = np.cumsum([0] + [len(m) for m, _ in checked[:-1]])
    lut = _choice_tables([p for _, p in checked], offsets).ravel()
    # each chain's row in the flattened LUT: system * 2**16
    lut_base = np.repeat(np.arange(n_sys, dtype=np.int32) << LUT_BITS, chains)
    # (burn_in + steps, systems * chains) LUT_BITS-bit draws, each system's block from its own generator
    draws = np.concatenate([r.integers(0, 1 << LUT_BITS, (burn_in + steps, chains), dtype=np.int32) for r in rngs],
                           axis=1)
    draws += lut_base
    if device is not None:
        return _iterate_torch(table, lut, draws, n_sys, chains, steps, burn_in, device)
    x = np.zeros(n_sys * chains, dtype=np.float32)
    y = np.zeros(n_sys * chains, dtype=np.float32)
    xs = np.empty((steps, n_sys * chains), dtype=np.float32)
    ys = np.empty((steps, n_sys * chains), dtype=np.float32)
    pick = np.empty(n_sys * chains, dtype=np.int32)
    scratch = np.empty((2, 2, n_sys * chains), dtype=np.float32)  # burn-in steps write here, alternating
    with np.errstate(over="ignore", invalid="ignore"):
        for step in range(burn_in + steps):
            np.take(lut, draws[step], out=pick)
            if step >= burn_in:  # write the new points straight into the output rows
                new_x, new_y = xs[step - burn_in], ys[step - burn_in]
            else:
                new_x, new_y = scratch[step % 2]
            np.multiply(a.take(pick), x, out=new_x)
            new_x += b.take(pick) * y
            new_x += e.take(pick)
            np.multiply(c.take(pick), x, out=new_y)
            new_y += d.take(pick) * y
            new_y += f.take(pick)
            x, y = new_x, new_y
    # (steps, systems*chains) -> (systems, steps*chains)
    xs = xs.reshape(steps, n_sys, chains).transpose(1, 0, 2).reshape(n_sys, steps * chains)
    ys = ys.reshape(steps, n_sys, chains).transpose(1, 0, 2).reshape(n_sys, steps * chains)
    return xs, ys


def _iterate_torch(table: np.ndarray, lut: np.ndarray, draws: np.ndarray, n_sys: int, chains: int, steps: int,
                   burn_in: int, device: str):
    """The chaos-game loop of :func:`chaos_game` in torch (one kernel chain per step on a GPU)."""
    import torch

    coefficients = torch.as_tensor(np.ascontiguousarray(table.T), device=device)  # (6, total maps)
    picks = torch.as_tensor(lut, device=device, dtype=torch.int64)[torch.as_tensor(draws, device=device,
                                                                                     dtype=torch.int64)]
    n = n_sys * chains
    x = torch.zeros(n, dtype=torch.float32, device=device)
    y = torch.zeros(n, dtype=torch.float32, device=device)
    xs = torch.empty((steps, n), dtype=torch.float32, device=device)
    ys = torch.empty((steps, n), dtype=torch.float32, device=device)
    for step in range(burn_in + steps):
        a, b, c, d, e, f = coefficients[:, picks[step]]
        # same operation order as the numpy path: (a*x + b*y) + e
        new_x = a * x + b * y + e
        new_y = c * x + d * y + f
        x, y = new_x, new_y
        if step >= burn_in:
            xs[step - burn_in] = x
            ys[step - burn_in] = y
    xs = xs.reshape(steps, n_sys, chains).permute(1, 0, 2).reshape(n_sys, steps * chains)
    ys = ys.reshape(steps, n_sys, chains).permute(1, 0, 2).reshape(n_sys, steps * chains)
    return xs, ys


def rasterise_torch(xs, ys, image_size: int, patch: int, keep: np.ndarray, pad: int = PAD) -> np.ndarray:
    """:func:`rasterise` for torch point clouds (on their device); returns numpy uint8 images."""
    import torch

    device = xs.device
    b = xs.shape[0]
    side = image_size + patch + 1
    finite = torch.isfinite(xs) & torch.isfinite(ys)

    def to_pixels(v):
        lo = torch.where(finite, v, torch.full_like(v, float("inf"))).amin(dim=1, keepdim=True)
        hi = torch.where(finite, v, torch.full_like(v, float("-inf"))).amax(dim=1, keepdim=True)
        scale = torch.where(hi > lo, float(image_size - 2 * pad) / (hi - lo), torch.zeros_like(hi))
        u = (torch.where(finite, v, lo) - lo) * scale + float(pad)
        u = torch.nan_to_num(u, nan=float(pad), posinf=float(image_size - 1), neginf=0.0)
        return torch.clamp(u, 0, image_size - 1).to(torch.int64) + patch

    flat = to_pixels(ys) * side + to_pixels(xs) + torch.arange(b, device=device)[:, None] * side * side
    occupied = torch.zeros(b * side * side, dtype=torch.bool, device=device)
    occupied[flat[finite]] = True
    occupied = occupied.reshape(b, side, side)
    covered = torch.zeros((b, image_size, image_size), dtype=torch.bool, device=device)
    for dy in range(1, patch + 1):
        for dx in range(1, patch + 1):
            covered |= occupied[:, patch - dy:patch - dy + image_size, patch - dx:patch - dx + image_size]
    drawn = torch.flip(covered, dims=[1]) & torch.as_tensor(keep, device=device)
    return (drawn.to(torch.uint8) * GREY).cpu().numpy()


def patch_bits(rng: np.random.Generator, image_size: int, patch: int) -> np.ndarray:
    """(image_size, image_size) bool: each pixel on with :func:`patch_bit_probability` (exactly, up to 3x3)."""
    cells = patch * patch
    if cells <= 15:  # 2^(cells-1) of the 2^cells - 1 non-empty masks have a given cell on
        return rng.integers(0, 2**cells - 1, (image_size, image_size), dtype=np.uint16) < 2 ** (cells - 1)
    return rng.random((image_size, image_size), dtype=np.float32) < np.float32(patch_bit_probability(patch))


def rasterise(xs: np.ndarray, ys: np.ndarray, image_size: int, patch: int, keep: np.ndarray,
              pad: int = PAD, with_origin: bool = False) -> np.ndarray:
    """Draw point clouds as FractalDB patches, grey on black.

    Parameters
    ----------
    xs, ys : (b, n) float
        Point clouds; each is rescaled by its own finite min/max into the image
        (FractalDB's ``__rescale``: pixels ``pad .. image_size - pad``, truncated).
    image_size : int
    patch : int
        Side of the square patch pasted at every point, its top-left corner one
        pixel right of and below the point (FractalDB's ``paste(patch, (x + 1, y + 1))``).
    keep : (b, image_size, image_size) bool
        Per-pixel random bits (on with :func:`patch_bit_probability`): which covered pixels are grey.
    pad : int
        FractalDB's padding (pixels left free by the rescale on every side before the patch offset).
    with_origin : bool
        Draw the origin too, as one more point of every cloud (without copying the clouds).

    Returns
    -------
    (b, image_size, image_size) uint8
    """
    b = xs.shape[0]
    # a point at pixel p sits at canvas index p + patch; its patch covers pixels p + 1 .. p + patch
    canvas_side = image_size + patch + 1
    occupied = np.zeros((b, canvas_side * canvas_side), dtype=bool)
    for i in range(b):  # per image: min/max rescale and one scatter (no per-point loop)
        x, y = xs[i], ys[i]
        finite = np.isfinite(x) & np.isfinite(y)
        if not finite.all():
            x, y = x[finite], y[finite]
        if len(x) == 0 and not with_origin:
            continue
        (px, ox), (py, oy) = (_to_pixels(v, image_size, pad, with_origin) for v in (x, y))
        occupied[i, (py + patch) * canvas_side + px + patch] = True
        if with_origin:
            occupied[i, (oy + patch) * canvas_side + ox + patch] = True
    occupied = occupied.reshape(b, canvas_side, canvas_side)
    covered = np.zeros((b, image_size, image_size), dtype=bool)
    for dy in range(1, patch + 1):
        for dx in range(1, patch + 1):
            covered |= occupied[:, patch - dy:patch - dy + image_size, patch - dx:patch - dx + image_size]
    # y grows downwards in images; FractalDB draws with y up
    drawn = covered[:, ::-1, :] & keep
    return np.where(drawn, np.uint8(GREY), np.uint8(0)).astype(np.uint8)


def _to_pixels(v: np.ndarray, image_size: int, pad: int, with_origin: bool = False):
    """FractalDB's ``__rescale`` of one axis: ``int((v - min) / (max - min) * (size - 2 pad) + pad)``.

    The extremes land on pixels ``pad`` and ``image_size - pad`` (clipped to the
    last pixel when ``pad`` is 0); a degenerate axis lands on ``pad``, and pixels
    of a cloud too large for floats stay inside the image. With ``with_origin`` the
    origin counts as one more point. Returns ``(pixels, the origin's pixel)``.
    """
    lo = float(v.min()) if len(v) else 0.0
    hi = float(v.max()) if len(v) else 0.0
    if with_origin:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    span = hi - lo
    scale = float(image_size - 2 * pad) / span if span > 0 else 0.0
    if not (np.isfinite(span) and np.isfinite(scale)):  # a diverging cloud: the careful path
        with np.errstate(over="ignore", invalid="ignore"):
            u = (np.asarray(v, dtype=np.float64) - lo) * scale + float(pad)
            origin = (0.0 - lo) * scale + float(pad)
        u = np.clip(np.nan_to_num(u, nan=float(pad), posinf=float(image_size - 1), neginf=0.0), 0, image_size - 1)
        origin = float(np.clip(np.nan_to_num(origin, nan=float(pad), posinf=image_size - 1, neginf=0.0), 0, image_size - 1))
        pixels = u.astype(np.intp)
    else:  # three passes in the points' own precision, no copies beyond the result
        u = np.subtract(v, lo, dtype=np.result_type(v.dtype, np.float32))
        u *= scale
        u += float(pad)
        if pad == 0:  # the maximum lands on image_size itself
            np.minimum(u, image_size - 1, out=u)
        pixels = u.astype(np.intp)
        origin = min((0.0 - lo) * scale + float(pad), image_size - 1)
    return pixels, int(origin)


def apply_flip(image: np.ndarray, flip: int) -> np.ndarray:
    """Flip index 0..3: none, horizontal, vertical, both (last two axes)."""
    if flip & 1:
        image = image[..., :, ::-1]
    if flip & 2:
        image = image[..., ::-1, :]
    return np.ascontiguousarray(image)


def draw_fractals(systems: list[tuple[np.ndarray, np.ndarray]], seeds: list[int], *, image_size: int = 362,
                  points: int = 200_000, patch: int = 3, flips: list[int] | None = None,
                  chains: int = 1024, device: str | None = None, pad: int = PAD) -> np.ndarray:
    """Draw one grey image per (system, seed), all at once.

    Every cloud holds the origin besides its chains' points (FractalDB's chain
    starts there and draws it), so the origin is inside the rescaled box.

    Parameters
    ----------
    systems : list of (maps (n, 6), probs (n,))
    seeds : list of int
        One item seed per image: it fixes the chaos game and the patch bits.
    flips : list of int, optional
        Flip index per image (default: none).
    device : str, optional
        Torch device to draw on (e.g. ``"cuda"``); default: numpy on the CPU.
    pad : int
        FractalDB's padding (pixels), see :func:`rasterise`.

    Returns
    -------
    (len(systems), image_size, image_size) uint8
    """
    if not 0 <= 2 * pad < image_size:
        raise ValueError(f"pad ({pad}) must be >= 0 and less than half of image_size ({image_size})")
    if len(systems) != len(seeds):
        raise ValueError(f"one seed per system needed: {len(systems)} systems, {len(seeds)} seeds")
    if not systems:
        return np.zeros((0, image_size, image_size), dtype=np.uint8)
    # Per-image generators keep every image reproducible alone, whatever its batch.
    item_rngs = [rng_from_seed(s) for s in seeds]
    keep = np.stack([patch_bits(r, image_size, patch) for r in item_rngs])
    xs, ys = chaos_game(systems, points, item_rngs, chains=chains, device=device)
    if device is None:
        images = rasterise(xs, ys, image_size, patch, keep, pad, with_origin=True)
    else:
        import torch

        origin = torch.zeros((len(systems), 1), dtype=xs.dtype, device=xs.device)
        xs, ys = torch.cat([origin, xs], dim=1), torch.cat([origin, ys], dim=1)
        images = rasterise_torch(xs, ys, image_size, patch, keep, pad)
    if flips is not None:
        images = np.stack([apply_flip(img, f) for img, f in zip(images, flips)])
    return images


# --------------------------------------------------------------------------- records


class RenderDeviceError(ValueError):
    """A requested compute device is not available."""


def draw_fractal_records(records: list[dict], device: str | None = None) -> np.ndarray:
    """(len(records), s, s) uint8 images of fractal records (all the same size and point count)."""
    if not records:
        return np.zeros((0, 0, 0), dtype=np.uint8)
    first = records[0]
    return draw_fractals([(np.asarray(r["maps"]), np.asarray(r["probs"])) for r in records],
                         [r["seed"] for r in records], image_size=first["image_size"], points=first["points"],
                         patch=first["patch"], pad=first["pad"], flips=[r["flip"] for r in records], device=device)


def fractal_device(setting: str) -> str | None:
    """The torch device for ``FractalRenderSettings.device`` (None: numpy on the CPU)."""
    if setting == "cpu":
        return None
    try:
        import torch
    except ImportError:
        torch = None
    available = torch is not None and torch.cuda.is_available()
    if setting == "cuda" and not available:
        raise RenderDeviceError("fractal_render.device is 'cuda' but torch sees no CUDA device")
    return "cuda" if available else None
