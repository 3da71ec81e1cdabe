"""ProcSynthDB, Algorithm 1: random unions of primitives with random modifiers.

One class is drawn from one generator (seeded by the class seed)::

    p ~ U{1..v}
    repeat p times:
        for each primitive type in (cube, sphere, cone, cylinder, torus):
            add U{0..w} instances with random dimensions, segment counts,
            position and rotation; each instance is left as it is, turned into a
            wireframe (its edges become tubes of random radius) or loop-subdivided
    if the union's largest bounding-box extent > max_size (or nothing was added):
        reject and draw again (at most ``max_rejections`` times, then a clear error)

The class's meshes are the accepted base mesh (instance 0) and copies of it
stretched along one axis, drawn once per class, by each of ``stretch_factors``
(instances 1, 2, ...); ``max_size`` bounds the base mesh, as in the proposal.

Dimensions (``size_range``) are full sizes: box edge lengths, sphere / cylinder /
cone diameters and heights, the torus's outer diameter. Everything is built on
plain ``(vertices, faces)`` arrays: unit templates (cached per segment count) are
scaled, rotated and moved with one matrix product; wireframes are made for all
edges of a primitive at once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import trimesh

from services.common.cancel import check_cancelled
from services.common.errors import SpecError
from services.common.spec.meshgen import ProcSynthParams
from services.common.seeds import rng_from_seed

MODIFIERS = ("as_is", "wireframe", "subdivided")


@dataclass
class ProcSynthShape:
    """An accepted base shape and how it was made.

    Attributes
    ----------
    mesh : trimesh.Trimesh
        The union of all primitives (not merged; components may intersect).
    primitives : list of dict
        One record per primitive: ``type``, ``modifier``, ``faces`` (its face count).
    rejections : int
        Draws rejected before this one (too large or empty).
    too_large : int
        Of those, the draws rejected by the ``max_size`` check.
    """

    mesh: trimesh.Trimesh
    primitives: list[dict] = field(default_factory=list)
    rejections: int = 0
    too_large: int = 0


# --------------------------------------------------------------------------- templates


def _readonly(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    vertices = np.ascontiguousarray(vertices, dtype=np.float64)
    faces = np.ascontiguousarray(faces, dtype=np.int64)
    vertices.flags.writeable = False
    faces.flags.writeable = False
    return vertices, faces


@functools.lru_cache(maxsize=256)
def unit_template(kind: str, segments: int, subdivided: bool) -> tuple[np.ndarray, np.ndarray]:
    """Vertices and faces of a unit primitive centred on the origin (cached, read-only).

    Loop subdivision is linear in the vertex positions, so subdividing the unit
    template and then applying the affine transform equals subdividing the
    transformed primitive; that is why subdivided templates can be cached.

    Parameters
    ----------
    kind : {"cube", "sphere", "cone", "cylinder"}
        Unit cube (edge 1), sphere (diameter 1), cone and cylinder (diameter 1, height 1, along z).
    segments : int
        Segments around round primitives (ignored for the cube).
    subdivided : bool
        Apply one level of loop subdivision.

    Returns
    -------
    vertices : (n, 3) float
    faces : (m, 3) int
    """
    if kind == "cube":
        mesh = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    elif kind == "sphere":
        # uv_sphere doubles the longitude count: (segments/2 latitudes, segments longitudes)
        mesh = trimesh.creation.uv_sphere(radius=0.5, count=(max(segments // 2, 3), max(segments // 2, 2)))
    elif kind == "cylinder":
        mesh = trimesh.creation.cylinder(radius=0.5, height=1.0, sections=segments)
    elif kind == "cone":
        mesh = trimesh.creation.cone(radius=0.5, height=1.0, sections=segments)
        mesh.apply_translation((0.0, 0.0, -0.5))
    else:
        raise ValueError(f"no unit template for primitive type {kind!r}")
    vertices, faces = mesh.vertices, mesh.faces
    if subdivided:
        vertices, faces = trimesh.remesh.subdivide_loop(vertices, faces, iterations=1)
    return _readonly(vertices, faces)


def torus_arrays(major_radius: float, minor_radius: float, segments: int, subdivided: bool) -> tuple[np.ndarray, np.ndarray]:
    """A torus around z (its shape depends on the radius ratio, so it is not templated)."""
    mesh = trimesh.creation.torus(
        major_radius=major_radius, minor_radius=minor_radius,
        major_sections=segments, minor_sections=max(segments // 2, 3),
    )
    vertices, faces = mesh.vertices, mesh.faces
    if subdivided:
        vertices, faces = trimesh.remesh.subdivide_loop(vertices, faces, iterations=1)
    return vertices, faces


# --------------------------------------------------------------------------- wireframes


def unique_edges(faces: np.ndarray) -> np.ndarray:
    """Undirected edges of a triangle mesh, each once.

    Parameters
    ----------
    faces : (m, 3) int

    Returns
    -------
    edges : (e, 2) int, sorted within each row
    """
    edges = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    return np.unique(edges, axis=0)


def edge_tubes(vertices: np.ndarray, edges: np.ndarray, radius: float, sides: int) -> tuple[np.ndarray, np.ndarray]:
    """Open tubes of ``sides`` facets around every edge, built for all edges at once.

    Parameters
    ----------
    vertices : (n, 3) float
    edges : (e, 2) int
    radius : float
        Tube radius (world units).
    sides : int
        Facets around each tube (>= 3).

    Returns
    -------
    vertices : (e * 2 * sides, 3) float
    faces : (e * 2 * sides, 3) int
    """
    start, end = vertices[edges[:, 0]], vertices[edges[:, 1]]
    axis = end - start
    length = np.linalg.norm(axis, axis=1)
    keep = length > 1e-9 * max(float(length.max(initial=0.0)), 1e-12)  # drop degenerate (pole) edges
    start, end, axis, length = start[keep], end[keep], axis[keep], length[keep]
    axis = axis / length[:, None]
    # a helper vector never parallel to the axis, then an orthonormal frame (u, w) per edge
    helper = np.where(np.abs(axis[:, [0]]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
    u = np.cross(axis, helper)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    w = np.cross(axis, u)
    angles = np.linspace(0.0, 2.0 * np.pi, sides, endpoint=False)
    ring = radius * (np.cos(angles)[None, :, None] * u[:, None, :] + np.sin(angles)[None, :, None] * w[:, None, :])
    tube_vertices = np.concatenate([start[:, None, :] + ring, end[:, None, :] + ring], axis=1)  # (e, 2*sides, 3)
    # quads between ring k (bottom) and ring k (top), split into two triangles
    k = np.arange(sides)
    k1 = (k + 1) % sides
    quad = np.stack(
        [np.stack([k, k1, sides + k1], axis=1), np.stack([k, sides + k1, sides + k], axis=1)], axis=1
    ).reshape(-1, 3)  # (2*sides, 3) local indices
    offsets = (np.arange(len(start)) * 2 * sides)[:, None, None]
    tube_faces = (quad[None, :, :] + offsets).reshape(-1, 3)
    return tube_vertices.reshape(-1, 3), tube_faces


# --------------------------------------------------------------------------- drawing


def _uniform(rng: np.random.Generator, bounds, size=None):
    return rng.uniform(bounds.low, bounds.high, size)


def draw_primitive(params: ProcSynthParams, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """One primitive of type ``kind`` with random dimensions, pose and modifier.

    Returns
    -------
    vertices : (n, 3) float
    faces : (m, 3) int
    record : dict
        ``type``, ``modifier``, ``faces``.
    """
    modifier = MODIFIERS[int(rng.choice(3, p=np.asarray(params.modifier_probs)))]
    segments = int(rng.integers(params.segments_range.low, params.segments_range.high + 1))
    sizes = _uniform(rng, params.size_range, 3)
    rotation = trimesh.transformations.random_rotation_matrix(rand=rng.random(3))[:3, :3]
    position = _uniform(rng, params.position_range, 3)
    subdivided = modifier == "subdivided"
    if kind == "torus":
        ratio = _uniform(rng, params.torus_minor_ratio)
        major = 0.5 * sizes[0] / (1.0 + ratio)  # outer diameter = 2 (major + minor)
        vertices, faces = torus_arrays(major, ratio * major, segments, subdivided)
        scale = np.ones(3)
    else:
        vertices, faces = unit_template(kind, segments, subdivided)
        # cube: three edge lengths; round primitives: one diameter (x = y) and a height
        scale = sizes if kind == "cube" else (np.full(3, sizes[0]) if kind == "sphere" else np.array([sizes[0], sizes[0], sizes[1]]))
    vertices = (vertices * scale) @ rotation.T + position
    if modifier == "wireframe":
        radius = float(_uniform(rng, params.wire_thickness_range))
        vertices, faces = edge_tubes(vertices, unique_edges(faces), radius, params.wire_sides)
    return vertices, faces, {"type": kind, "modifier": modifier, "faces": int(len(faces))}


def draw_candidate(params: ProcSynthParams, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """One draw of Algorithm 1 (before the size check).

    Returns
    -------
    vertices : (n, 3) float
    faces : (m, 3) int
    records : list of dict (one per primitive; empty when every count came out 0)
    """
    rounds = int(rng.integers(1, params.v + 1))
    parts_v, parts_f, records = [], [], []
    offset = 0
    for _ in range(rounds):
        for kind in params.primitives:
            for _ in range(int(rng.integers(0, params.w + 1))):
                vertices, faces, record = draw_primitive(params, kind, rng)
                parts_v.append(vertices)
                parts_f.append(faces + offset)
                offset += len(vertices)
                records.append(record)
    if not records:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64), records
    return np.concatenate(parts_v), np.concatenate(parts_f), records


def generate_base(params: ProcSynthParams, seed: int) -> ProcSynthShape:
    """The accepted base shape of the class whose seed is ``seed``.

    Raises
    ------
    SpecError
        When ``max_rejections`` draws in a row were too large or empty: the
        parameters (``max_size`` against ``size_range`` / ``position_range``) make
        acceptance too unlikely.
    """
    rng = rng_from_seed(seed)
    too_large = empty = 0
    largest = 0.0
    while too_large + empty < params.max_rejections:
        check_cancelled("procsynth")  # a served call whose client left stops here
        vertices, faces, records = draw_candidate(params, rng)
        if not records:
            empty += 1
            continue
        extent = float(np.ptp(vertices, axis=0).max())
        if extent > params.max_size:
            too_large += 1
            largest = max(largest, extent)
            continue
        mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=False)
        return ProcSynthShape(mesh=mesh, primitives=records, rejections=too_large + empty, too_large=too_large)
    raise SpecError(
        f"procsynth: no shape accepted after max_rejections={params.max_rejections} draws "
        f"({too_large} larger than max_size={params.max_size} (largest extent {largest:.3g}), {empty} empty); "
        "raise max_size, or shrink size_range / position_range, or raise w"
    )


def stretch(mesh: trimesh.Trimesh, axis: int, factor: float) -> trimesh.Trimesh:
    """A copy of ``mesh`` scaled by ``factor`` along ``axis`` about its bounding-box centre."""
    centre = mesh.bounds.mean(axis=0)
    vertices = mesh.vertices.copy()
    vertices[:, axis] = (vertices[:, axis] - centre[axis]) * factor + centre[axis]
    return trimesh.Trimesh(vertices=vertices, faces=mesh.faces.copy(), process=False)


def stretch_axis(seed: int) -> int:
    """The class's stretch axis (0, 1 or 2), from its own stream so it does not shift the shape draw."""
    return int(np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=(1,)))).integers(0, 3))


def instance_variant(params: ProcSynthParams, instance: int, axis: int) -> tuple[int, float]:
    """(axis, factor) of ``instance``: 0 is the base (factor 1); then each stretch factor in turn.

    Instances beyond ``1 + len(stretch_factors)`` repeat the factors along the next axes.
    """
    if instance < 0:
        raise ValueError(f"instance must be >= 0, got {instance}")
    if instance == 0 or not params.stretch_factors:
        return axis, 1.0
    k = instance - 1
    n = len(params.stretch_factors)
    return (axis + k // n) % 3, float(params.stretch_factors[k % n])


def shape_stats(mesh: trimesh.Trimesh) -> dict:
    """Vertex / face counts and bounding-box extents of a mesh (JSON-able)."""
    extents = np.ptp(mesh.vertices, axis=0) if len(mesh.vertices) else np.zeros(3)
    return {
        "vertices": int(len(mesh.vertices)),
        "faces": int(len(mesh.faces)),
        "extents": [round(float(x), 6) for x in extents],
    }


def procsynth_instance(params: ProcSynthParams, base: ProcSynthShape, seed: int, instance: int) -> tuple[trimesh.Trimesh, dict]:
    """Instance ``instance`` of a class from its base shape, plus its statistics."""
    axis, factor = instance_variant(params, instance, stretch_axis(seed))
    mesh = base.mesh if factor == 1.0 else stretch(base.mesh, axis, factor)
    types, modifiers = {}, {}
    for record in base.primitives:
        types[record["type"]] = types.get(record["type"], 0) + 1
        modifiers[record["modifier"]] = modifiers.get(record["modifier"], 0) + 1
    stats = shape_stats(mesh) | {
        "rejections": base.rejections,
        "primitives": dict(sorted(types.items())),
        "modifiers": dict(sorted(modifiers.items())),
        "stretch_axis": axis,
        "stretch_factor": factor,
    }
    return mesh, stats
