"""morphsynth: decimation bound, smooth GP deformations whose variance grows with the scale, albedo colours."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from pydantic import ValidationError

from services.common.spec.meshgen import GPKernelTerm, MorphSynthParams
from services.meshgen.morphsynth import GPBasis, MorphModel, decimate, kernel_matrix


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


def test_bad_parameters_name_the_field():
    with pytest.raises(ValidationError, match="eigen_components"):
        MorphSynthParams(nystrom_points=20, eigen_components=30)
    with pytest.raises(ValidationError, match="length_scale"):
        MorphSynthParams(shape_kernel=[{"scale": 0.1, "length_scale": -1}])
