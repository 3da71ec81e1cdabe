"""morphsynth: decimation bound, smooth GP deformations whose variance grows with the scale, albedo colours,
one morph per class (classes sharing a base differ; instances are equal unless instance_scale > 0)."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from pydantic import ValidationError

from services.common.spec.meshgen import GPKernelTerm, MorphSynthParams
from services.meshgen.morphsynth import GPBasis, MorphModel, decimate, kernel_matrix
from services.meshgen.registry import get_family


@pytest.fixture(scope="module")
def sphere() -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=4, radius=1.0)  # 2562 vertices


def _params(scale: float, length: float = 0.3, **kw) -> MorphSynthParams:
    return MorphSynthParams(
        shape_kernel=[GPKernelTerm(scale=scale, length_scale=length)], nystrom_points=200, eigen_components=40,
        max_vertices=1500, **kw,
    )


def test_decimation_bounds_vertices(sphere):
    small = decimate(sphere, 500)
    assert len(small.vertices) <= 500
    assert len(small.vertices) > 100  # still a surface, not a handful of points
    assert np.allclose(np.linalg.norm(small.vertices, axis=1), 1.0, atol=0.05)


def test_nystrom_basis_approximates_the_kernel():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-0.5, 0.5, (400, 3))
    terms = [GPKernelTerm(scale=1.0, length_scale=0.5)]
    basis = GPBasis.build(pts, pts[rng.choice(400, 200, replace=False)], terms, components=60)
    approx = basis.basis @ basis.basis.T
    exact = kernel_matrix(pts, pts, terms)
    assert np.abs(approx - exact).mean() < 0.005
    assert np.abs(np.diag(approx) - 1.0).max() < 0.15  # marginal variance = scale² everywhere


def test_deformations_are_smooth(sphere):
    params = _params(0.05)
    model = MorphModel.build(sphere, params, seed=1)
    mesh, _ = model.sample(params, seed=2)
    displacement = mesh.vertices - model.mesh.vertices
    edges = model.mesh.edges_unique
    neighbour_diff = np.linalg.norm(displacement[edges[:, 0]] - displacement[edges[:, 1]], axis=1).mean()
    rng = np.random.default_rng(0)
    pairs = rng.integers(0, len(displacement), (5000, 2))
    random_diff = np.linalg.norm(displacement[pairs[:, 0]] - displacement[pairs[:, 1]], axis=1).mean()
    assert neighbour_diff < 0.2 * random_diff  # nearby vertices move together


def test_variance_grows_with_scale(sphere):
    rms = []
    for scale in (0.02, 0.05, 0.1):
        params = _params(scale)
        model = MorphModel.build(sphere, params, seed=1)
        values = [model.sample(params, seed=s)[1]["displacement_rms"] for s in range(8)]
        rms.append(np.mean(values))
    assert rms[0] < rms[1] < rms[2]
    # rms of a 3-vector with per-component std s is sqrt(3) s (up to the Nyström truncation and sampling noise)
    assert 0.5 < rms[1] / (np.sqrt(3) * 0.05) < 1.5


def test_albedo_is_per_vertex_colour_and_instances_differ(sphere):
    params = _params(0.05)
    model = MorphModel.build(sphere, params, seed=1)
    a, stats_a = model.sample(params, seed=2)
    b, _ = model.sample(params, seed=3)
    colours = a.visual.vertex_colors
    assert colours.shape == (len(a.vertices), 4) and colours[:, :3].std() > 5
    assert not np.array_equal(a.vertices, b.vertices)
    assert np.array_equal(a.faces, b.faces)  # same base mesh, different GP samples
    again, _ = model.sample(params, seed=2)
    assert np.array_equal(again.vertices, a.vertices) and np.array_equal(again.visual.vertex_colors, colours)


TINY = {"base": {"segments_range": {"low": 8, "high": 10}, "w": 2}, "base_classes": 100, "max_vertices": 400,
        "nystrom_points": 60, "eigen_components": 20}


def _class_meshes(params: dict, class_index: int, seed: int = 5) -> list:
    return get_family("morphsynth").generate_class(params, seed, class_index, [0, 1, 2])


@pytest.fixture(scope="module")
def classes_3_and_103():
    return _class_meshes(TINY, 3), _class_meshes(TINY, 103)


def test_classes_sharing_a_base_are_different_morphs(classes_3_and_103):
    a, b = classes_3_and_103
    assert a[0].stats["base_class"] == b[0].stats["base_class"] == 3
    ma, mb = a[0].obj, b[0].obj
    assert np.array_equal(ma.faces, mb.faces)  # one decimated base, vertex for vertex
    size = float(np.linalg.norm(ma.extents))
    # two independent class morphs at scale 0.05 D differ by about sqrt(2) * sqrt(3) * 0.05 D ≈ 0.12 D per vertex
    gap = np.linalg.norm(ma.vertices - mb.vertices, axis=1).mean() / size
    assert gap > 0.03, gap
    ca = ma.visual.vertex_colors[:, :3].astype(float)
    cb = mb.visual.vertex_colors[:, :3].astype(float)
    assert np.abs(ca - cb).mean() > 4.0  # RGB units of 255: albedo std 0.05 per class
    assert a[0].data != b[0].data


def test_instances_of_a_class_are_one_mesh_without_instance_deformation(classes_3_and_103):
    for items in classes_3_and_103:
        assert [i.instance for i in items] == [0, 1, 2]
        assert len({i.data for i in items}) == 1  # identical GLB bytes
        assert np.array_equal(items[0].obj.vertices, items[2].obj.vertices)
        assert items[0].stats["instance_displacement_rms"] == 0.0


def test_instance_deformation_is_smaller_than_the_class_morph(classes_3_and_103):
    base = classes_3_and_103[0]
    items = _class_meshes(TINY | {"instance_scale": 0.2}, 3)
    size = float(np.linalg.norm(items[0].obj.extents))
    within = np.linalg.norm(items[0].obj.vertices - items[1].obj.vertices, axis=1).mean() / size
    from_class = np.linalg.norm(items[0].obj.vertices - base[0].obj.vertices, axis=1).mean() / size
    between = np.linalg.norm(base[0].obj.vertices - classes_3_and_103[1][0].obj.vertices, axis=1).mean() / size
    assert 0.0 < within < 0.5 * between
    assert 0.0 < from_class < 0.5 * between  # the class morph stays; instances scatter around it
    assert 0.0 < items[0].stats["instance_displacement_rms"] < items[0].stats["displacement_rms"]


def test_bad_parameters_name_the_field():
    with pytest.raises(ValidationError, match="eigen_components"):
        MorphSynthParams(nystrom_points=20, eigen_components=30)
    with pytest.raises(ValidationError, match="length_scale"):
        MorphSynthParams(shape_kernel=[{"scale": 0.1, "length_scale": -1}])
    with pytest.raises(ValidationError, match="instance_scale"):
        MorphSynthParams(instance_scale=1.0)  # instance variation must stay below the class-level one
