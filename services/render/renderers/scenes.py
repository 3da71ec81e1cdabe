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
the scene), textured with Perlin or sparse-convolution noise (2-D, in image space: features
per image side = the noise scale); the nearest object wins each pixel, and the label map
holds ``class + 1`` there (0 = background).

Pure numpy: no OpenGL needed.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np

from services.common.seeds import derive_seed, rng_from_seed
from services.common.spec.render import NoiseSceneParams
from services.render.renderers.noise import noise_image

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
        "noise": params.noise, "objects": objects,
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


def draw_scene(record: dict) -> tuple[np.ndarray, np.ndarray]:
    """Draw a scene record.

    Returns
    -------
    rgb : (h, w, 3) uint8
    labels : (h, w) uint16
        ``class_index + 1`` of the front-most object per pixel, 0 on the background.
    """
    size = int(record["image_size"])
    kind = record["noise"]
    bg = record["background"]
    bg_noise = noise_image(size, bg["noise_scale"], rng_from_seed(bg["texture_seed"]), kind)
    if "hue" in bg:  # records written before the published generator: a tinted background
        rgb = bg_noise[..., None] * _hsv_to_rgb(bg["hue"], 0.25, 0.6)
    else:  # black and white
        rgb = np.repeat(bg_noise[..., None], 3, axis=-1)
    labels = np.zeros((size, size), dtype=np.uint16)
    zbuffer = np.full((size, size), -np.inf)
    light = np.asarray(record["light_direction"])
    view = np.array([0.0, 0.0, 1.0])
    half = light + view
    half /= np.linalg.norm(half)
    for obj in record["objects"]:
        z, normal = ray_cast_ellipsoid(obj, size)
        front = z > zbuffer
        if not front.any():
            continue
        texture = noise_image(size, obj["noise_scale"], rng_from_seed(obj["texture_seed"]), kind)
        colour = np.asarray(obj["colour"]) if "colour" in obj else _hsv_to_rgb(obj["hue"], 0.8, 1.0)
        albedo = (0.45 + 0.55 * texture)[..., None] * colour
        kd, ks = obj.get("kd", record.get("diffuse")), obj.get("ks", record.get("specular"))
        shininess = obj.get("shininess", record.get("shininess"))
        lambert = np.clip(normal @ light, 0.0, None)[..., None]
        specular = (np.clip(normal @ half, 0.0, None) ** shininess)[..., None]
        shaded = albedo * (record["ambient"] + kd * lambert) + ks * specular
        rgb = np.where(front[..., None], shaded, rgb)
        labels[front] = obj["class_index"] + 1
        zbuffer = np.where(front, z, zbuffer)
    rgb = np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)
    return rgb, labels


def dominant_class(labels: np.ndarray) -> int:
    """The object class covering most pixels (0 if the scene shows no object)."""
    counts = np.bincount(labels.ravel(), minlength=2)
    counts[0] = 0
    return int(counts.argmax()) - 1 if counts.sum() else 0
