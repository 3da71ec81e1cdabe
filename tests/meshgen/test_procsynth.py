"""procsynth: Algorithm 1's contract (primitive types, modifiers, max_size, rejections, stretch variants)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from services.common.errors import SpecError
from services.common.seeds import derive_seed
from services.common.spec.meshgen import PRIMITIVES, ProcSynthParams
from services.meshgen.procsynth import (
    draw_primitive,
    edge_tubes,
    generate_base,
    procsynth_instance,
    unique_edges,
    unit_template,
)

SMALL = dict(segments_range={"low": 8, "high": 12})


def test_all_primitive_types_appear_across_classes():
    params = ProcSynthParams(**SMALL)
    seen = set()
    for c in range(6):
        base = generate_base(params, derive_seed(0, "procsynth", c))
        seen |= {r["type"] for r in base.primitives}
        # the union really contains that many primitives' faces
        assert sum(r["faces"] for r in base.primitives) == len(base.mesh.faces)
    assert seen == set(PRIMITIVES)


def test_restricting_primitives_is_honoured():
    params = ProcSynthParams(primitives=["torus"], **SMALL)
    base = generate_base(params, 5)
    assert {r["type"] for r in base.primitives} == {"torus"}


@pytest.mark.parametrize("kind", ["cube", "sphere", "cone", "cylinder"])
def test_modifiers_change_the_geometry(kind):
    """Subdivided = 4x the faces of the template; wireframe = 2*sides faces per edge of the template."""
    faces_of = {}
    for modifier, probs in {"as_is": (1, 0, 0), "wireframe": (0, 1, 0), "subdivided": (0, 0, 1)}.items():
        params = ProcSynthParams(modifier_probs=probs, segments_range={"low": 10, "high": 10}, wire_sides=5)
        vertices, faces, record = draw_primitive(params, kind, np.random.default_rng(1))
        assert record["modifier"] == modifier
        faces_of[modifier] = len(faces)
        if modifier == "wireframe":
            tpl_v, tpl_f = unit_template(kind, 10, False)
            edges = unique_edges(tpl_f)
            lengths = np.linalg.norm(tpl_v[edges[:, 0]] - tpl_v[edges[:, 1]], axis=1)
            assert len(faces) == 2 * 5 * int((lengths > 1e-9).sum())
    assert faces_of["subdivided"] == 4 * faces_of["as_is"]


def test_edge_tubes_have_the_requested_radius():
    vertices = np.array([[0.0, 0, 0], [1.0, 0, 0], [1.0, 2.0, 0]])
    edges = np.array([[0, 1], [1, 2]])
    tv, tf = edge_tubes(vertices, edges, radius=0.1, sides=6)
    assert tv.shape == (2 * 12, 3) and tf.shape == (2 * 12, 3)
    first = tv[:12]  # tube around the x axis: every vertex is 0.1 from it
    assert np.allclose(np.linalg.norm(first[:, 1:], axis=1), 0.1)
    assert tf.max() < len(tv)


def test_extents_within_max_size_and_rejections_counted():
    # the former position range: with max_size 5 the default ±3.75 would reject nearly every draw
    params = ProcSynthParams(max_size=5.0, position_range={"low": -2.0, "high": 2.0}, **SMALL)
    rejections = []
    for c in range(8):
        base = generate_base(params, derive_seed(1, "procsynth", c))
        assert np.ptp(base.mesh.vertices, axis=0).max() <= 5.0
        rejections.append(base.rejections)
    assert sum(rejections) > 0  # the rejection path ran


def test_max_size_rejects_draws_at_default_settings():
    """Algorithm 1's size check matters with the defaults: some classes need redraws, all end within max_size."""
    params = ProcSynthParams()
    too_large, extents = [], []
    for c in range(40):
        base = generate_base(params, derive_seed(2026, "procsynth", c))
        too_large.append(base.too_large)
        extents.append(float(np.ptp(base.mesh.vertices, axis=0).max()))
    assert max(extents) <= params.max_size
    # about a quarter of the draws are too large (see ProcSynthParams): ~13 over 40 classes
    assert sum(too_large) >= 5 and sum(t > 0 for t in too_large) >= 4
    assert sum(too_large) < 40  # and acceptance stays likely
    assert max(extents) > 0.9 * params.max_size  # accepted shapes use the room up to max_size


def test_impossible_spec_ends_with_a_clear_error():
    params = ProcSynthParams(
        max_size=2.0, size_range={"low": 1.9, "high": 1.95}, position_range={"low": -5, "high": 5},
        max_rejections=20, **SMALL,
    )
    with pytest.raises(SpecError, match="max_rejections=20.*max_size"):
        generate_base(params, 3)


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"v": 0}, "v"),
        ({"w": 0}, "w"),
        ({"max_size": -1}, "max_size"),
        ({"max_size": 0.4}, "max_size"),
        ({"size_range": {"low": 2, "high": 1}}, "size_range"),
        ({"modifier_probs": (0.5, 0.5, 0.5)}, "modifier_probs"),
        ({"primitives": ["pyramid"]}, "primitives"),
        ({"stretch_factors": [0]}, "stretch_factors"),
    ],
)
def test_bad_parameters_are_refused_naming_the_field(bad, field):
    with pytest.raises(ValidationError) as info:
        ProcSynthParams(**bad)
    assert field in str(info.value)


def test_stretch_variants_differ_along_one_axis_only():
    params = ProcSynthParams(stretch_factors=[1.5, 2.0], **SMALL)
    seed = 11
    base = generate_base(params, seed)
    meshes = [procsynth_instance(params, base, seed, i) for i in range(3)]
    base_mesh, base_stats = meshes[0]
    assert base_stats["stretch_factor"] == 1.0
    for (mesh, stats), factor in zip(meshes[1:], (1.5, 2.0)):
        axis = stats["stretch_axis"]
        others = [a for a in range(3) if a != axis]
        assert np.array_equal(mesh.vertices[:, others], base_mesh.vertices[:, others])
        assert np.allclose(np.ptp(mesh.vertices[:, axis]), factor * np.ptp(base_mesh.vertices[:, axis]))
        assert np.array_equal(mesh.faces, base_mesh.faces)
    assert meshes[1][1]["stretch_axis"] == meshes[2][1]["stretch_axis"]  # twice along the same axis


def test_same_seed_same_shape_other_seed_other_shape():
    params = ProcSynthParams(**SMALL)
    a, b, c = generate_base(params, 7), generate_base(params, 7), generate_base(params, 8)
    assert np.array_equal(a.mesh.vertices, b.mesh.vertices) and np.array_equal(a.mesh.faces, b.mesh.faces)
    assert a.mesh.vertices.shape != c.mesh.vertices.shape or not np.allclose(a.mesh.vertices, c.mesh.vertices)
