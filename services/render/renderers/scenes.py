"""Noise-textured abstract scenes: 1-20 ellipsoids on a noise background, with per-pixel labels.

Each class fixes the *means* of three object properties: hue, elongation
(longest semi-axis over the others) and texture noise scale. Every object draws
its own values from normal distributions around its class's means (hue wrapped
on the colour circle, elongation clamped to >= 1, noise scale clamped to > 0).
Objects are ray-cast analytically (orthographic camera looking down -z), shaded
with Phong's model (ambient + diffuse + specular, one directional light), and
textured with Perlin or sparse-convolution noise; the nearest object wins each
pixel, and the label map holds ``class + 1`` there (0 = background).

Pure numpy: no OpenGL needed.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np

from services.common.seeds import derive_seed, rng_from_seed
from services.common.spec.render import NoiseSceneParams
from services.render.renderers.noise import noise_image

HUE_RANGE = (0.0, 1.0)
ELONGATION_RANGE = (1.0, 3.0)
NOISE_SCALE_RANGE = (2.0, 24.0)  # texture features per image side; class means are log-uniform in it


def class_means(root_seed: int, dataset_id: str, class_index: int) -> dict:
    """The means that define class ``class_index``: hue in [0,1), elongation >= 1, noise scale > 0."""
    rng = rng_from_seed(derive_seed(root_seed, dataset_id, "class-means", class_index))
    return {
        "hue": float(rng.uniform(*HUE_RANGE)),
        "elongation": float(rng.uniform(*ELONGATION_RANGE)),
        "noise_scale": float(math.exp(rng.uniform(math.log(NOISE_SCALE_RANGE[0]), math.log(NOISE_SCALE_RANGE[1])))),
    }


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """(3, 3) uniformly random rotation (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def sample_scene(params: NoiseSceneParams, classes: int, *, root_seed: int, dataset_id: str, scene: int) -> dict:
    """The JSON record of one scene (everything needed to draw it again)."""
    seed = derive_seed(root_seed, dataset_id, "scene", scene)
    rng = rng_from_seed(seed)
    lo, hi = params.objects_range
    count = int(rng.integers(lo, hi + 1))
    objects = []
    for depth_rank in range(count):
        cls = int(rng.integers(0, classes))
        means = class_means(root_seed, dataset_id, cls)
        hue = float((means["hue"] + rng.normal(0.0, params.hue_std)) % 1.0)
        elongation = float(max(1.0, means["elongation"] + rng.normal(0.0, params.elongation_std)))
        noise_scale = float(max(0.5, means["noise_scale"] * (1.0 + rng.normal(0.0, params.noise_scale_std))))
        size = float(rng.uniform(0.06, 0.22))  # shortest semi-axis, in image widths
        objects.append({
            "class_index": cls,
            "hue": hue, "elongation": elongation, "noise_scale": noise_scale,
            "centre": [float(rng.uniform(0.1, 0.9)), float(rng.uniform(0.1, 0.9)), float(rng.uniform(0.0, 1.0))],
            "semi_axes": [size * elongation, size, size],
            "rotation": random_rotation(rng).tolist(),
            "texture_seed": int(rng.integers(0, 2**31)),
        })
    light = rng.normal(size=3)
    light[2] = abs(light[2]) + 0.5  # from the camera's side
    return {
        "kind": "noisescene", "scene": int(scene), "seed": int(seed), "dataset_id": dataset_id, "image_size": params.image_size,
        "noise": params.noise, "objects": objects,
        "light_direction": (light / np.linalg.norm(light)).tolist(),
        "ambient": 0.25, "diffuse": 0.75, "specular": 0.35, "shininess": 20.0,
        "background": {"hue": float(rng.uniform()), "noise_scale": float(rng.uniform(2.0, 12.0)),
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
    rgb = bg_noise[..., None] * _hsv_to_rgb(bg["hue"], 0.25, 0.6)
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
        albedo = (0.45 + 0.55 * texture)[..., None] * _hsv_to_rgb(obj["hue"], 0.8, 1.0)
        lambert = np.clip(normal @ light, 0.0, None)[..., None]
        specular = (np.clip(normal @ half, 0.0, None) ** record["shininess"])[..., None]
        shaded = albedo * (record["ambient"] + record["diffuse"] * lambert) + record["specular"] * specular
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
