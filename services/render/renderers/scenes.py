"""Noise-textured abstract scenes: 1-20 ellipsoids on a noise background, with per-pixel labels.

The published generator (every value a :class:`NoiseSceneParams` field). Each class fixes
the *means* (h_k, rho_k, r_k) of three object properties (:class:`NoiseClassPrior`; the
published three by default): every object draws its hue h ~ N(h_k, 50^2) mod 360 (colour
HSL(h, 1, 0.5)), elongation rho ~ N(rho_k, 0.05^2) clamped to [0, 1] and texture noise
scale r ~ N(r_k, 5^2) clamped to > 1. Elongation is axis-parallel (:func:`elongation_axes`:
rho = 0.5 is a sphere). Per object: scale ~ U(0.1, 0.7), centre x, y ~ U(-1.5, 1.5), Phong
kd ~ U(0.25, 0.75), ks ~ U(0, 0.5), shininess ~ U(10, 100), lit by one light behind the
camera. The background is black-and-white noise of scale r_bg ~ U(1, 20).

Objects are ray-cast analytically (orthographic camera looking down -z at [-w, w]^2 of
the scene) and textured with 3D noise, improved Perlin or sparse convolution with a cubic
kernel (:mod:`.noise3d`), evaluated at each visible surface point in the object's own frame
(the unit sphere it is stretched from) multiplied by its noise scale r: the texture is a solid
texture carved by the surface and moves with the object. The background is the same noise on
the image plane, r_bg lattice cells per image side. The nearest object wins each pixel, and the
label map holds ``class + 1`` there (0 = background).

numpy and one numba kernel: no OpenGL needed.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np

from services.common.seeds import derive_seed, rng_from_seed
from services.common.spec.render import NoiseSceneParams
from services.render.renderers.noise3d import (KIND_CODES, NOISE_FUNCTIONS, SPARSE_IMPULSES, background_noise,
                                               impulse_table, label_counts, permutation_table, render_scene,
                                               tile_pixels)

#: Means of classes beyond the spec's ``class_priors``, drawn from the seed.
EXTRA_HUE_RANGE = (0.0, 360.0)
EXTRA_RHO_RANGE = (0.3, 0.7)
EXTRA_NOISE_SCALE_RANGE = (5.0, 30.0)


def class_means(root_seed: int, dataset_id: str, class_index: int, params: NoiseSceneParams | None = None) -> dict:
    """The means (hue in degrees, rho, noise scale) of class ``class_index``: the spec's prior for it, or
    (for classes beyond the listed priors) means drawn from the seed."""
    params = params or NoiseSceneParams()
    if class_index < len(params.class_priors):
        prior = params.class_priors[class_index]
        return {"hue": prior.hue, "rho": prior.rho, "noise_scale": prior.noise_scale}
    rng = rng_from_seed(derive_seed(root_seed, dataset_id, "class-means", class_index))
    return {"hue": float(rng.uniform(*EXTRA_HUE_RANGE)), "rho": float(rng.uniform(*EXTRA_RHO_RANGE)),
            "noise_scale": float(rng.uniform(*EXTRA_NOISE_SCALE_RANGE))}


def elongation_axes(rho: float) -> tuple[float, float]:
    """Axis-parallel elongation: sx = rho, sy = 1 - rho, both scaled by sqrt(2) / sqrt(sx^2 + sy^2)
    (so rho = 0.5 gives (1, 1): a sphere, and every rho the same sx^2 + sy^2 = 2)."""
    sx, sy = rho, 1.0 - rho
    factor = math.sqrt(2.0) / math.sqrt(sx * sx + sy * sy)
    return sx * factor, sy * factor


def hsl_colour(hue_degrees: float) -> list[float]:
    """RGB in [0, 1] of HSL(h, 1, 0.5): the fully saturated hue."""
    return list(colorsys.hls_to_rgb((hue_degrees % 360.0) / 360.0, 0.5, 1.0))


def sample_scene(params: NoiseSceneParams, classes: int, *, root_seed: int, dataset_id: str, scene: int) -> dict:
    """The JSON record of one scene (everything needed to draw it again)."""
    seed = derive_seed(root_seed, dataset_id, "scene", scene)
    rng = rng_from_seed(seed)
    lo, hi = params.objects_range
    count = int(rng.integers(lo, hi + 1))
    half = params.view_half_width
    objects = []
    for _ in range(count):
        cls = int(rng.integers(0, classes))
        means = class_means(root_seed, dataset_id, cls, params)
        hue = float((means["hue"] + rng.normal(0.0, params.hue_std)) % 360.0)
        rho = float(np.clip(means["rho"] + rng.normal(0.0, params.rho_std), 0.0, 1.0))
        # clamped to > 1: just above 1, as a draw at or below 1 has no texture to speak of
        noise_scale = float(max(1.0 + 1e-6, means["noise_scale"] + rng.normal(0.0, params.noise_scale_std)))
        scale = float(rng.uniform(*params.scale_range))
        x, y = (float(v) for v in rng.uniform(*params.position_range, size=2))
        depth = float(rng.uniform(-1.0, 1.0))
        sx, sy = elongation_axes(rho)
        objects.append({
            "class_index": cls, "hue": hue, "rho": rho, "noise_scale": noise_scale, "scale": scale,
            "position": [x, y, depth], "colour": hsl_colour(hue),
            "kd": float(rng.uniform(*params.diffuse_range)), "ks": float(rng.uniform(*params.specular_range)),
            "shininess": float(rng.uniform(*params.shininess_range)),
            # the same ellipsoid in image units ([0, 1] across the view) for the ray caster
            "centre": [(x + half) / (2 * half), (y + half) / (2 * half), (depth + half) / (2 * half)],
            "semi_axes": [scale * sx / (2 * half), scale * sy / (2 * half), scale / (2 * half)],
            "rotation": np.eye(3).tolist(),
            "texture_seed": int(rng.integers(0, 2**31)),
        })
    return {
        "kind": "noisescene", "scene": int(scene), "seed": int(seed), "dataset_id": dataset_id, "image_size": params.image_size,
        "noise": params.noise if params.noise != "both" else ("perlin", "sparse_convolution")[scene % 2],
        "objects": objects,
        "light_direction": [0.0, 0.0, 1.0],  # behind the camera
        "ambient": params.ambient,
        "background": {"noise_scale": float(rng.uniform(*params.background_noise_scale_range)),
                       "texture_seed": int(rng.integers(0, 2**31))},
    }


def _hsv_to_rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value))


def ray_cast_ellipsoid(obj: dict, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Front surface of one ellipsoid under an orthographic camera looking down -z.

    Returns
    -------
    z : (size, size) float
        Height of the front surface (``-inf`` off the object).
    normal : (size, size, 3) float
        Unit surface normal (zeros off the object).
    """
    coords = (np.arange(size) + 0.5) / size
    px, py = np.meshgrid(coords, coords)
    rotation = np.asarray(obj["rotation"])
    inv_axes2 = 1.0 / np.asarray(obj["semi_axes"]) ** 2
    quadric = rotation @ np.diag(inv_axes2) @ rotation.T  # (p-c)^T Q (p-c) = 1
    cx, cy, cz = obj["centre"]
    dx, dy = px - cx, py - cy
    # Solve Q22 t^2 + 2 (Q02 dx + Q12 dy) t + (Q00 dx^2 + 2 Q01 dx dy + Q11 dy^2) - 1 = 0 for t = z - cz.
    qa = quadric[2, 2]
    qb = quadric[0, 2] * dx + quadric[1, 2] * dy
    qc = quadric[0, 0] * dx * dx + 2 * quadric[0, 1] * dx * dy + quadric[1, 1] * dy * dy - 1.0
    disc = qb * qb - qa * qc
    hit = disc >= 0
    t = (-qb + np.sqrt(np.where(hit, disc, 0.0))) / qa  # the root nearer the camera (+z)
    z = np.where(hit, cz + t, -np.inf)
    offset = np.stack([dx, dy, np.where(hit, t, 0.0)], axis=-1)
    normal = offset @ quadric  # gradient of the quadric (Q symmetric)
    normal /= np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-12)
    normal[~hit] = 0.0
    return z, normal


def _texture_tables(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A texture's noise identity from its seed: permutation table, impulse table, offset into the field."""
    rng = rng_from_seed(seed)
    return permutation_table(rng), impulse_table(rng), rng.uniform(0.0, 256.0, 3)


def _pixel_box(centre: np.ndarray, extent: np.ndarray, size: int) -> list[int]:
    """(col0, col1, row0, row1): the pixels whose centres may fall inside a box of half-sizes ``extent``."""
    lo = np.floor((centre[:2] - extent[:2]) * size - 0.5) - 1
    hi = np.ceil((centre[:2] + extent[:2]) * size - 0.5) + 1
    lo, hi = np.clip(lo, 0, size - 1), np.clip(hi, -1, size - 1)
    return [int(lo[0]), int(hi[0]), int(lo[1]), int(hi[1])]


def draw_scene(record: dict) -> tuple[np.ndarray, np.ndarray]:
    """Draw a scene record: ray-cast ellipsoids, 3D noise at each visible surface point (object frame, times
    the object's noise scale), Phong shading; black-and-white noise behind (see :mod:`.noise3d`).

    Returns
    -------
    rgb : (h, w, 3) uint8
    labels : (h, w) uint16
        ``class_index + 1`` of the front-most object per pixel, 0 on the background.
    """
    size = int(record["image_size"])
    kind = record["noise"]
    if kind not in KIND_CODES:
        raise ValueError(f"noise kind must be one of {sorted(KIND_CODES)}, got {kind!r}")
    bg = record["background"]
    bg_perm, bg_impulses, bg_offset = _texture_tables(bg["texture_seed"])
    # records written before the published generator have a tinted background; now it is black and white
    tint = _hsv_to_rgb(bg["hue"], 0.25, 0.6) if "hue" in bg else np.ones(3)
    objects = record["objects"]
    n = len(objects)
    centres, quadrics, to_local = np.zeros((n, 3)), np.zeros((n, 3, 3)), np.zeros((n, 3, 3))
    boxes, offsets = np.zeros((n, 4), dtype=np.int64), np.zeros((n, 3))
    perms = np.zeros((n, 512), dtype=np.int64)
    impulses = np.zeros((n, 256, SPARSE_IMPULSES, 4))
    colours, labels_in = np.zeros((n, 3)), np.zeros(n, dtype=np.uint16)
    kd, ks, shininess, noise_scales = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
    for o, obj in enumerate(objects):
        rotation = np.asarray(obj["rotation"], dtype=np.float64)
        axes = np.asarray(obj["semi_axes"], dtype=np.float64)
        if rotation.shape != (3, 3) or axes.shape != (3,) or not np.all(axes > 0):
            raise ValueError(f"object {o}: rotation must be 3x3 and semi_axes 3 positive numbers")
        centres[o] = obj["centre"]
        quadrics[o] = rotation @ np.diag(1.0 / axes**2) @ rotation.T
        to_local[o] = np.diag(1.0 / axes) @ rotation.T  # p - c -> the unit sphere the ellipsoid stretches
        boxes[o] = _pixel_box(centres[o], np.sqrt(np.diag(rotation @ np.diag(axes**2) @ rotation.T)), size)
        perms[o], impulses[o], offsets[o] = _texture_tables(obj["texture_seed"])
        colours[o] = obj["colour"] if "colour" in obj else _hsv_to_rgb(obj["hue"], 0.8, 1.0)
        kd[o] = obj.get("kd", record.get("diffuse"))
        ks[o] = obj.get("ks", record.get("specular"))
        shininess[o] = obj.get("shininess", record.get("shininess"))
        noise_scales[o] = obj["noise_scale"]
        labels_in[o] = obj["class_index"] + 1
    light = np.asarray(record["light_direction"], dtype=np.float64)
    light = light / np.linalg.norm(light)
    half = light + np.array([0.0, 0.0, 1.0])
    half = half / np.linalg.norm(half) if np.linalg.norm(half) > 1e-12 else np.array([0.0, 0.0, 1.0])
    rgb = np.empty((size, size, 3), dtype=np.uint8)
    labels = np.empty((size, size), dtype=np.uint16)
    # sparse noise in tiles of about one lattice cell (noise3d.tile_pixels), per pixel where cells are under half a
    # pixel; Perlin noise per pixel
    pixels_per_cell = [size * min(obj["semi_axes"][:2]) / obj["noise_scale"] for obj in objects]
    tiles = np.array([tile_pixels(p) if kind == "sparse_convolution" else 0 for p in pixels_per_cell], dtype=np.int64)
    background = background_noise(kind, size, float(bg["noise_scale"]), bg_offset, bg_perm, bg_impulses)
    render_scene(size, NOISE_FUNCTIONS[kind], background, centres, quadrics, to_local, boxes, noise_scales, offsets,
                 tiles, perms, impulses, colours, kd, ks, shininess, labels_in,
                 float(record["ambient"]), light, half, tint, rgb, labels)
    return rgb, labels


def dominant_class(labels: np.ndarray) -> int:
    """The object class covering most pixels (0 if the scene shows no object)."""
    counts = label_counts(np.ascontiguousarray(labels, dtype=np.uint16))
    counts[0] = 0
    return int(counts.argmax()) - 1 if counts.sum() else 0
