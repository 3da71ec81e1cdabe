"""Per-image scene descriptions drawn from :class:`RenderSettings`.

The sampler is pure: it knows nothing of OpenGL. Each image gets one generator,
``derive_rng(seed, dataset_id, class, instance, view)``, and one plain-JSON record
holding everything needed to re-render it (camera pose and intrinsics, each
light with its pose, ambient level, material, object pose, background). With
``pose_variation=False`` every camera quantity (and the scale jitter) takes its
distribution's centre; with ``illumination_variation=False`` every light
quantity does (the FlatWorld ablations).

With ``planar_variation.enabled`` the record also holds ``planar``: a flip and a
planar affine map (and its (2, 3) pixel matrix) applied to the canonical render
(FlatWorld's 2D variation), drawn after everything else.

With ``camera.distance: auto`` the camera distance fits the mesh's *unscaled*
bounding sphere (times ``auto_fit_margin``), so the scale jitter shows in the
image as a change of apparent size (and of depth).

Conventions: world is y-up; the object's bounding-box centre sits at the origin
after its pose; cameras look at the origin (OpenGL camera: looking down -z, +y up),
``pose`` matrices map camera/light coordinates to world coordinates.
"""

from __future__ import annotations

import math

import numpy as np

from services.common.seeds import derive_seed, rng_from_seed
from services.common.spec.render import LightSpec, RenderSettings

RECORD_VERSION = 1


def _draw(distribution, rng: np.random.Generator, vary: bool) -> float:
    """One draw, or the distribution's centre when variation is off (then the rng is not advanced).

    Callers keep the order of draws fixed, so a record depends only on its seed and the settings.
    """
    return float(distribution.sample(rng)) if vary else float(distribution.center())


def direction(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """Unit vector (3,) pointing from the origin towards azimuth/elevation (y-up)."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    return np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])


def look_at(position: np.ndarray, target: np.ndarray, roll_deg: float = 0.0) -> np.ndarray:
    """(4, 4) camera-to-world pose of a camera at ``position`` looking at ``target``.

    The camera's -z axis points at the target, +y is as close to world +y as
    possible (world +z when looking straight up/down), then rolled about the view axis.
    """
    back = np.asarray(position, float) - np.asarray(target, float)
    back /= np.linalg.norm(back)
    up = np.array([0.0, 1.0, 0.0])
    if abs(back @ up) > 0.999:
        up = np.array([0.0, 0.0, 1.0])
    right = np.cross(up, back)
    right /= np.linalg.norm(right)
    true_up = np.cross(back, right)
    r = math.radians(roll_deg)
    # roll rotates the image: mix right/up about the viewing axis
    right, true_up = math.cos(r) * right + math.sin(r) * true_up, -math.sin(r) * right + math.cos(r) * true_up
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, true_up, back, position
    return pose


def intrinsics(image_size: int, fov_deg: float) -> dict:
    """Pinhole intrinsics (pixels) of a square image with vertical field of view ``fov_deg``."""
    f = 0.5 * image_size / math.tan(math.radians(fov_deg) / 2)
    return {"fx": f, "fy": f, "cx": image_size / 2, "cy": image_size / 2, "width": image_size, "height": image_size}


def _light(template: LightSpec, rng: np.random.Generator, vary: bool, radius: float) -> dict:
    az = _draw(template.azimuth_deg, rng, vary)
    el = _draw(template.elevation_deg, rng, vary)
    intensity = _draw(template.intensity, rng, vary)
    color = [min(1.0, max(0.0, _draw(c, rng, vary))) for c in template.color_rgb]
    toward = direction(az, el)
    distance = template.distance_factor * radius
    if template.kind == "directional":
        pose = look_at(toward, np.zeros(3))  # only the orientation matters
    else:
        pose = look_at(toward * distance, np.zeros(3))
        intensity *= distance**2  # candela-like: keep the irradiance at the object independent of its size
    light = {"kind": template.kind, "azimuth_deg": az, "elevation_deg": el, "intensity": intensity,
             "color": color, "pose": pose.tolist()}
    if template.kind == "spot":
        light["inner_cone"] = 0.0
        light["outer_cone"] = math.pi / 6
    return light


def sample_view(settings: RenderSettings, *, root_seed: int, dataset_id: str, class_index: int, instance: int,
                view: int, mesh_centre: np.ndarray, mesh_radius: float, mesh_key: str = "") -> dict:
    """The full record of one image.

    Parameters
    ----------
    settings : RenderSettings
    root_seed : int
        The dataset's root seed.
    dataset_id, class_index, instance, view :
        Name the image; with ``root_seed`` they fix its generator.
    mesh_centre : (3,) float
        Bounding-box centre of the mesh (moved to the origin).
    mesh_radius : float
        Bounding radius about that centre (world units, > 0).
    mesh_key : str
        Store key of the mesh, recorded for re-rendering.

    Returns
    -------
    dict
        JSON-able record (see module docstring).
    """
    seed = derive_seed(root_seed, dataset_id, class_index, instance, view)
    rng = rng_from_seed(seed)
    return sample_view_from_seed(settings, seed=seed, rng=rng, mesh_centre=mesh_centre, mesh_radius=mesh_radius,
                                 extra={"dataset_id": dataset_id, "class_index": int(class_index),
                                        "instance": int(instance), "view": int(view), "mesh_key": mesh_key})


def sample_view_from_seed(settings: RenderSettings, *, seed: int, rng: np.random.Generator, mesh_centre: np.ndarray,
                          mesh_radius: float, extra: dict | None = None) -> dict:
    """Like :func:`sample_view` with an explicit item seed and its generator."""
    if not (mesh_radius > 0 and math.isfinite(mesh_radius)):
        raise ValueError(f"mesh_radius must be a positive finite number, got {mesh_radius}")
    pose_on, light_on = settings.pose_variation, settings.illumination_variation
    cam = settings.camera
    # Fixed draw order: scale, camera (az, el, roll, fov, distance), illumination.
    scale = _draw(settings.scale_jitter, rng, pose_on)
    if scale <= 0:
        raise ValueError(f"scale_jitter drew a non-positive scale {scale}")
    azimuth = _draw(cam.azimuth_deg, rng, pose_on)
    elevation = _draw(cam.elevation_deg, rng, pose_on)
    roll = _draw(cam.roll_deg, rng, pose_on)
    fov = _draw(cam.fov_deg, rng, pose_on)
    if not 1.0 <= fov <= 170.0:
        raise ValueError(f"camera.fov_deg drew {fov}, outside [1, 170] degrees")
    radius = mesh_radius * scale
    if cam.distance == "auto":
        # the *unscaled* bounding sphere just fits the smaller half-angle, plus a margin: the camera stays put
        # and the scale jitter changes the object's apparent size (scaling the distance too would cancel it)
        distance = cam.auto_fit_margin * mesh_radius / math.sin(math.radians(fov) / 2)
    else:
        distance = _draw(cam.distance, rng, pose_on)
    if distance <= 0:
        raise ValueError(f"camera.distance drew a non-positive distance {distance}")
    position = direction(azimuth, elevation) * distance
    camera = {
        "pose": look_at(position, np.zeros(3), roll).tolist(),
        "azimuth_deg": azimuth, "elevation_deg": elevation, "roll_deg": roll, "fov_deg": fov, "distance": distance,
        "znear": max(1e-3, (distance - radius) * 0.5) if distance > radius else 1e-3 * radius,
        "zfar": distance + 2.0 * radius,
        "intrinsics": intrinsics(settings.image_size, fov),
    }
    illum = settings.illumination
    count = max(1, int(round(_draw(illum.count, rng, light_on))))
    # point/spot lights sit at distance_factor bounding radii of the unjittered mesh: fixed per mesh when frozen
    lights = [_light(illum.lights[i % len(illum.lights)], rng, light_on, mesh_radius) for i in range(count)]
    ambient = min(1.0, max(0.0, _draw(illum.ambient, rng, light_on)))
    object_pose = np.diag([scale, scale, scale, 1.0])
    object_pose[:3, 3] = -scale * np.asarray(mesh_centre, dtype=float)
    material = settings.material.model_dump(mode="json")
    background = settings.background.model_dump(mode="json")
    background["color"] = background.pop("color_rgb")
    background["noise_seed"] = int(rng.integers(0, 2**31)) if background["kind"] == "noise" else 0
    planar = _planar(settings, rng) if settings.planar_variation.enabled else None  # drawn last: nothing else moves
    record = {
        "kind": "mesh",
        "version": RECORD_VERSION,
        **(extra or {}),
        "seed": int(seed),
        "image_size": settings.image_size,
        "backend": settings.backend,
        "pose_variation": pose_on,
        "illumination_variation": light_on,
        "camera": camera,
        "lights": lights,
        "ambient": ambient,
        "material": material,
        "object": {"scale": scale, "centre": [float(c) for c in mesh_centre], "radius": float(mesh_radius),
                   "pose": object_pose.tolist()},
        "background": background,
    }
    if planar is not None:
        record["planar"] = planar
    return record


def planar_matrix(flip: bool, rotation_deg: float, scale: float, shear_deg: float, translate: tuple[float, float],
                  image_size: int) -> np.ndarray:
    """(2, 3) map from canonical-render pixels to output pixels (continuous coordinates, x right, y down).

    ``translate · rotate · shear · scale · flip`` about the image centre; the rotation is counter-clockwise
    as seen, the shear horizontal, ``translate`` a fraction of the image side.
    """
    c = image_size / 2.0
    to_centre = np.array([[1.0, 0, -c], [0, 1.0, -c], [0, 0, 1.0]])
    flip_m = np.diag([-1.0 if flip else 1.0, 1.0, 1.0])
    scale_m = np.diag([scale, scale, 1.0])
    shear_m = np.array([[1.0, math.tan(math.radians(shear_deg)), 0], [0, 1.0, 0], [0, 0, 1.0]])
    t = math.radians(rotation_deg)  # y points down: counter-clockwise on screen
    rotate_m = np.array([[math.cos(t), math.sin(t), 0], [-math.sin(t), math.cos(t), 0], [0, 0, 1.0]])
    back = np.array([[1.0, 0, c + translate[0] * image_size], [0, 1.0, c + translate[1] * image_size], [0, 0, 1.0]])
    return (back @ rotate_m @ shear_m @ scale_m @ flip_m @ to_centre)[:2]


def _planar(settings: RenderSettings, rng: np.random.Generator) -> dict:
    """The 2D variant of one image (fixed draw order: flip, rotation, scale, shear, shift x, shift y)."""
    spec = settings.planar_variation
    flip = bool(rng.random() < spec.flip_probability)
    rotation = float(spec.rotation_deg.sample(rng))
    scale = float(spec.scale.sample(rng))
    if scale <= 0:
        raise ValueError(f"planar_variation.scale drew a non-positive scale {scale}")
    shear = float(spec.shear_deg.sample(rng))
    if not -80.0 <= shear <= 80.0:
        raise ValueError(f"planar_variation.shear_deg drew {shear}, outside [-80, 80] degrees")
    translate = (float(spec.translate.sample(rng)), float(spec.translate.sample(rng)))
    matrix = planar_matrix(flip, rotation, scale, shear, translate, settings.image_size)
    return {"flip": flip, "rotation_deg": rotation, "scale": scale, "shear_deg": shear, "translate": list(translate),
            "matrix": matrix.tolist()}


def flat_settings(settings: RenderSettings) -> RenderSettings:
    """FlatWorld: the same settings with pose and illumination variation off and 2D (planar) variation on."""
    planar = settings.planar_variation.model_copy(update={"enabled": True})
    return settings.model_copy(update={"pose_variation": False, "illumination_variation": False,
                                       "planar_variation": planar})


__all__ = ["sample_view", "sample_view_from_seed", "look_at", "direction", "intrinsics", "flat_settings", "planar_matrix"]
