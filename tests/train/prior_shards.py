"""Rendered-like 3D views with exact depth and cameras, for the 3D-prior tests.

Each sample is a sphere seen by a pinhole camera (40 degree field of view, 3 m from its look-at
point, as render records it): its colour is set by the class, its centre and radius vary per view,
it is shaded by a light at the camera, and ``depth.png`` holds its exact viewing-axis depth (no
surface off the sphere). The record carries ``camera.intrinsics`` and ``camera.distance`` as
render's records do.
"""

from __future__ import annotations

import colorsys
import json

import numpy as np

from services.common.seeds import derive_rng
from services.render.codec import encode_depth, encode_png
from services.render.sampling import intrinsics

DISTANCE = 3.0
FOV_DEG = 40.0


def sphere_depth(size: int, centre: np.ndarray, radius: float) -> np.ndarray:
    """(size, size) viewing-axis depth of a sphere (camera frame, looking down -z), ``inf`` off it."""
    k = intrinsics(size, FOV_DEG)
    u, v = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="xy")
    d = np.stack([(u - k["cx"]) / k["fx"], -(v - k["cy"]) / k["fy"], -np.ones_like(u)], axis=-1)
    a = (d * d).sum(-1)
    b = d @ centre
    disc = b * b - a * (centre @ centre - radius**2)
    t = (b - np.sqrt(np.maximum(disc, 0))) / a
    return np.where(disc > 0, t, np.inf)


def sphere_members(class_index: int, instance: int, view: int, classes: int, size: int, seed: int) -> dict[str, bytes]:
    rng = derive_rng(seed, "spheres", class_index, instance, view)
    radius = rng.uniform(0.45, 0.8)
    centre = np.array([rng.uniform(-0.4, 0.4), rng.uniform(-0.4, 0.4), -DISTANCE + rng.uniform(-0.3, 0.3)])
    depth = sphere_depth(size, centre, radius)
    k = intrinsics(size, FOV_DEG)
    u, v = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="xy")
    points = np.stack([(u - k["cx"]) / k["fx"], -(v - k["cy"]) / k["fy"], -np.ones_like(u)], axis=-1) * depth[..., None]
    normal = (points - centre) / radius
    with np.errstate(invalid="ignore", divide="ignore"):  # off the sphere: inf / inf, masked below
        shade = np.clip(-(normal * points / np.linalg.norm(points, axis=-1, keepdims=True)).sum(-1), 0, 1)
    colour = np.array(colorsys.hsv_to_rgb(class_index / classes, 0.8, 1.0))
    surface = np.isfinite(depth)
    rgb = np.where(surface[..., None], (0.2 + 0.8 * shade[..., None]) * colour, 0.15)
    record = {"kind": "mesh", "class_index": class_index, "instance": instance, "view": view,
              "camera": {"distance": DISTANCE, "fov_deg": FOV_DEG, "intrinsics": k},
              "sphere": {"centre": centre.tolist(), "radius": radius}}  # for tests: the exact scene
    return {"rgb.png": encode_png((rgb * 255).round().astype(np.uint8)),
            "depth.png": encode_depth(np.where(surface, depth, np.inf)),
            "json": json.dumps(record).encode(), "cls": str(class_index).encode("ascii")}
