"""Surface appearance per class, and laying one class's appearance on another class's shape (cue conflict).

Two sources of a class's appearance:

- :func:`class_texture` — a *solid texture* (Peachey 1985; Perlin 1985): a colour that is a function
  of the 3D point on the object, so it sticks to the surface from every viewpoint without UV maps.
  Class ``c`` gets two colours (hues spread over the classes by the golden angle, plus a seeded
  jitter) mixed by a sum of random plane waves in object coordinates (bounding radius = 1). It is
  laid on after rendering (:func:`apply_texture`): each object pixel is back-projected through the
  exact depth and the record's camera into object coordinates, the texture is evaluated there, and
  the rendered shading (a grey material) is multiplied by the albedo over the material's base colour.
  Written here (a few lines of numpy) because the per-pixel back-projection needs the renderer's
  exact depth and camera, which no texture library takes.
- :func:`transfer_albedo` — morphsynth's own per-vertex albedo of class B, carried onto class A's mesh
  by nearest neighbour in normalised object coordinates (centre and bounding radius of each mesh):
  each vertex of A takes the colour B has at the same relative place.
"""

from __future__ import annotations

import math

import numpy as np

from services.common.seeds import derive_seed, rng_from_seed

GOLDEN_ANGLE_DEG = 137.50776405003785


def _hsv(hue_deg: float, saturation: float, value: float) -> list[float]:
    h = (hue_deg % 360.0) / 60.0
    c = value * saturation
    x = c * (1 - abs(h % 2 - 1))
    r, g, b = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h) % 6]
    m = value - c
    return [r + m, g + m, b + m]


def class_texture(settings, class_index: int) -> dict:
    """The JSON-able texture of class ``class_index`` under a :class:`ClassTextureSpec` (or its dict).

    ``{"class": c, "colours": [[r, g, b], [r, g, b]], "waves": [[dx, dy, dz, frequency, phase], ...]}``:
    depends on ``settings.seed`` and the class only.
    """
    if hasattr(settings, "model_dump"):
        settings = settings.model_dump(mode="json")
    rng = rng_from_seed(derive_seed(int(settings["seed"]), "class-texture", int(class_index)))
    hue = class_index * GOLDEN_ANGLE_DEG + rng.uniform(-10.0, 10.0)
    second = hue + rng.uniform(120.0, 240.0)
    sat = float(settings["saturation"])
    colours = [_hsv(hue, sat, 0.95), _hsv(second, sat, 0.55)]
    low, high = settings["frequency"]
    frequency = rng.uniform(low, high)  # one scale per class: part of what tells the classes apart
    waves = []
    for _ in range(int(settings["waves"])):
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        waves.append([*map(float, direction), float(frequency * rng.uniform(0.8, 1.25)),
                      float(rng.uniform(0.0, 2.0 * math.pi))])
    return {"class": int(class_index), "colours": colours, "waves": waves}


def texture_albedo(texture: dict, points: np.ndarray) -> np.ndarray:
    """Albedo (..., 3) in [0, 1] of ``texture`` at object points (..., 3) in bounding-radius units."""
    waves = np.asarray(texture["waves"], dtype=np.float64)
    phase = 2.0 * math.pi * waves[:, 3] * (points @ waves[:, :3].T) + waves[:, 4]  # (..., K)
    s = np.cos(phase).sum(-1) / math.sqrt(len(waves))
    t = 0.5 + 0.5 * np.tanh(2.0 * s)
    c0, c1 = (np.asarray(c, dtype=np.float64) for c in texture["colours"])
    return (1.0 - t)[..., None] * c0 + t[..., None] * c1


def object_points(record: dict, depth: np.ndarray) -> np.ndarray:
    """(h, w, 3) object coordinates (mesh centre at 0, bounding radius 1) of each pixel; NaN off the object.

    Inverts pyrender's pinhole projection: a camera-frame point (X, Y, -z) lands at column
    ``fx X / z + cx`` and at ``fy Y / z + cy`` counted up from the bottom edge.
    """
    height, width = depth.shape
    k = record["camera"]["intrinsics"]
    z = np.where(np.isfinite(depth), depth, np.nan).astype(np.float64)
    u = np.arange(width, dtype=np.float64)[None, :] + 0.5
    v_up = height - (np.arange(height, dtype=np.float64)[:, None] + 0.5)
    x = (u - k["cx"]) * z / k["fx"]
    y = (v_up - k["cy"]) * z / k["fy"]
    cam = np.stack([x, y, -z, np.ones_like(z)], axis=-1)
    to_object = np.linalg.inv(np.asarray(record["object"]["pose"], dtype=np.float64)) @ np.asarray(
        record["camera"]["pose"], dtype=np.float64)
    obj = cam @ to_object.T
    centre = np.asarray(record["object"]["centre"], dtype=np.float64)
    return (obj[..., :3] - centre) / float(record["object"]["radius"])


def apply_texture(rgb: np.ndarray, depth: np.ndarray, mask: np.ndarray, record: dict, texture: dict) -> np.ndarray:
    """``rgb`` with ``texture`` laid on the object pixels: shading x albedo / material base colour."""
    points = object_points(record, depth)
    albedo = texture_albedo(texture, np.nan_to_num(points))
    base = np.asarray(record["material"]["base_color"], dtype=np.float64)
    gain = albedo / np.maximum(base, 1e-3)
    out = np.clip(rgb.astype(np.float64) * gain, 0, 255)
    return np.where(mask[..., None], np.round(out), rgb).astype(np.uint8)


def normalised_vertices(mesh) -> np.ndarray:
    """A mesh's vertices with its bounding-box centre at 0 and its bounding radius 1."""
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    centre = 0.5 * (vertices.min(0) + vertices.max(0))
    radius = float(np.sqrt(((vertices - centre) ** 2).sum(1).max()))
    return (vertices - centre) / max(radius, 1e-12)


def transfer_albedo(shape_mesh, appearance_mesh):
    """A copy of ``shape_mesh`` coloured with ``appearance_mesh``'s per-vertex albedo (nearest vertex in
    normalised object coordinates). ``ValueError`` when the appearance mesh has no vertex colours."""
    import trimesh
    from scipy.spatial import cKDTree

    if getattr(appearance_mesh.visual, "kind", None) != "vertex":
        raise ValueError("the appearance mesh has no per-vertex colours (only morphsynth meshes carry an albedo; "
                         "use render.class_texture for procsynth)")
    colours = np.asarray(appearance_mesh.visual.vertex_colors)
    _, nearest = cKDTree(normalised_vertices(appearance_mesh)).query(normalised_vertices(shape_mesh))
    return trimesh.Trimesh(vertices=np.asarray(shape_mesh.vertices), faces=np.asarray(shape_mesh.faces),
                           vertex_colors=colours[nearest], process=False)
