"""Fitting losses on cases with a known answer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from services.meshgen.losses import (
    LossError, adjacent_faces, chamfer_distance, edge_loss, laplacian_loss, nearest, normal_consistency, quadric_loss,
    sample_points, silhouette_loss, uniform_laplacian, vertex_quadrics,
)


def grid(n: int = 5, spacing: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A flat n x n vertex grid in z = 0, every cell split along the same diagonal (consistent winding)."""
    ys, xs = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    vertices = np.stack([xs.ravel() * spacing, ys.ravel() * spacing, np.zeros(n * n)], axis=1)
    faces = []
    for r in range(n - 1):
        for c in range(n - 1):
            a, b, d, e = r * n + c, r * n + c + 1, (r + 1) * n + c, (r + 1) * n + c + 1
            faces += [[a, b, e], [a, e, d]]
    return torch.tensor(vertices, dtype=torch.float64), torch.tensor(faces)


def tensors(mesh: trimesh.Trimesh):
    return torch.tensor(mesh.vertices, dtype=torch.float64), torch.tensor(mesh.faces)


def test_silhouette_loss():
    a = torch.zeros(2, 4, 4)
    b = a.clone()
    assert float(silhouette_loss(a, b)) == 0
    b[0, :2] = 1.0  # 8 of 32 pixels differ by 1
    assert float(silhouette_loss(a, b)) == pytest.approx(8 / 32)
    with pytest.raises(LossError, match="target"):
        silhouette_loss(a, b[:1])


def test_chamfer_identical_is_zero_and_a_small_shift_costs_twice_its_square():
    v, _ = grid(6)
    assert float(chamfer_distance(v, v)) == 0
    shift = torch.tensor([0.1, -0.2, 0.15], dtype=torch.float64)  # less than half the spacing: neighbours keep
    assert float(chamfer_distance(v, v + shift)) == pytest.approx(2 * float((shift ** 2).sum()))
    # chunking gives the same answer
    assert float(chamfer_distance(v, v + shift, chunk=7)) == pytest.approx(2 * float((shift ** 2).sum()))


def test_chamfer_between_concentric_spheres_sampled_is_the_radius_gap_squared():
    mesh = trimesh.creation.icosphere(4)
    v, f = tensors(mesh)
    g = torch.Generator().manual_seed(0)
    inner = sample_points(v, f, 20_000, g)
    outer = inner * 1.2  # every point moves 0.2 (of a unit sphere) outwards; the nearest outer point is ~its own
    assert float(chamfer_distance(inner, outer)) == pytest.approx(2 * 0.2 ** 2, rel=0.05)
    assert float(inner.norm(dim=1).min()) > 0.99  # samples lie on the (polyhedral) sphere


def test_nearest_finds_the_right_index():
    y = torch.tensor([[0.0, 0, 0], [10, 0, 0], [0, 10, 0]])
    x = torch.tensor([[9.0, 1, 0], [0, 0, 1], [1, 8, 0]])
    for method in ("kdtree", "brute"):
        d, i = nearest(x, y, chunk=2, method=method)
        assert i.tolist() == [1, 0, 2]
        assert d.tolist() == pytest.approx([2.0, 1.0, 5.0])
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(500, 3, generator=g), torch.rand(300, 3, generator=g)
    assert torch.equal(nearest(a, b, chunk=64, method="brute")[1], nearest(a, b)[1])


def test_edge_loss_of_a_unit_grid():
    v, f = grid(4)
    # 3 x 4 horizontal + 4 x 3 vertical unit edges, 9 diagonals of length sqrt(2)
    expected = (24 * 1.0 + 9 * 2.0) / 33
    assert float(edge_loss(v, f)) == pytest.approx(expected)
    assert float(edge_loss(v * 2, f)) == pytest.approx(4 * expected)
    assert float(edge_loss(v, f, target_length=1.0)) == pytest.approx(9 * (math.sqrt(2) - 1) ** 2 / 33)


def test_normal_consistency_flat_is_zero_a_right_fold_is_one():
    v, f = grid(4)
    assert float(normal_consistency(v, f)) == pytest.approx(0.0, abs=1e-12)
    # two triangles sharing the x-axis edge, folded to 90 degrees
    v2 = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0.5, 1, 0], [0.5, 0, 1]], dtype=torch.float64)
    f2 = torch.tensor([[0, 1, 2], [1, 0, 3]])
    assert adjacent_faces(f2).tolist() in ([[0, 1]], [[1, 0]])
    assert float(normal_consistency(v2, f2)) == pytest.approx(1.0)
    # a closed sphere is nearly flat locally, a coarse one less so
    fine, coarse = tensors(trimesh.creation.icosphere(3)), tensors(trimesh.creation.icosphere(1))
    assert 0 < float(normal_consistency(*fine)) < float(normal_consistency(*coarse))


def test_laplacian_of_a_flat_regular_grid_is_zero_inside():
    v, f = grid(6)
    lap = uniform_laplacian(v, f)
    n = 6
    inside = [r * n + c for r in range(1, n - 1) for c in range(1, n - 1)]
    assert torch.allclose(lap[inside], torch.zeros(len(inside), 3, dtype=torch.float64), atol=1e-12)
    assert float(lap.norm(dim=1).max()) > 0.1  # the border is not
    # lifting one inner vertex by h: its Laplacian is -h in z, each of its 6 neighbours' +h/deg
    lifted = v.clone()
    lifted[14, 2] = 0.3
    assert float(uniform_laplacian(lifted, f)[14, 2]) == pytest.approx(-0.3)
    assert float(laplacian_loss(lifted, f)) > float(laplacian_loss(v, f))


def test_quadric_of_vertices_on_the_target_planes_is_zero_and_an_offset_costs_its_square_per_plane():
    cube = trimesh.creation.box()
    tv, tf = tensors(cube)
    q = vertex_quadrics(tv, tf)
    assert float(quadric_loss(tv, tv, q)) == pytest.approx(0.0, abs=1e-12)
    # a flat grid: every vertex's faces all lie in z = 0; lifting everything by h costs (faces at the vertex) h^2
    v, f = grid(4)
    qg = vertex_quadrics(v, f)
    h = 0.01  # small: the nearest target vertex stays the vertex itself
    faces_at = torch.bincount(f.reshape(-1), minlength=len(v)).to(torch.float64)
    lifted = v + torch.tensor([0, 0, h], dtype=torch.float64)
    assert float(quadric_loss(lifted, v, qg)) == pytest.approx(float(faces_at.mean()) * h * h)
    # sliding within the plane costs nothing: the quadric measures distance to planes, not to vertices
    assert float(quadric_loss(v + torch.tensor([0.2, 0.1, 0], dtype=torch.float64), v, qg)) == pytest.approx(0, abs=1e-12)


def test_losses_are_differentiable():
    v, f = tensors(trimesh.creation.icosphere(2))
    v = (v * 0.9).requires_grad_(True)
    target = tensors(trimesh.creation.icosphere(2))[0]
    g = torch.Generator().manual_seed(1)
    total = (chamfer_distance(sample_points(v, f, 500, g), target) + edge_loss(v, f) + normal_consistency(v, f)
             + laplacian_loss(v, f) + quadric_loss(v, target, vertex_quadrics(target, f)))
    total.backward()
    assert torch.isfinite(v.grad).all() and float(v.grad.abs().sum()) > 0
