"""Losses for fitting a mesh to silhouettes or to another mesh (torch, differentiable in the vertices).

Written here (PyTorch3D has no installable build on this platform) after PyTorch3D's
definitions, so published weights carry over: ``mesh_edge_loss`` (mean squared edge length),
``mesh_normal_consistency`` (mean ``1 - cos`` between the normals of faces sharing an edge),
``mesh_laplacian_smoothing(method="uniform")`` (mean norm of the uniform Laplacian),
``chamfer_distance`` (mean squared nearest-neighbour distance, both directions, summed) and
``sample_points_from_meshes`` (area-weighted, differentiable). The quadric loss follows
Agarwal et al. (2020), "Learning to generate meshes with quadric loss": each predicted
vertex pays ``v^T Q v`` with ``Q`` the sum of the plane quadrics of the target faces around
its nearest target vertex (Garland and Heckbert's vertex quadric), i.e. the sum of squared
distances to those planes; averaged over the predicted vertices here so weights do not
depend on the mesh resolution.

Meshes are ``(vertices (v, 3) float tensor, faces (f, 3) int64 tensor)``.
"""

from __future__ import annotations

import torch

from services.common.errors import FlatlandError

CHUNK = 4096  # query points per nearest-neighbour block: a (4096, m) distance block at a time


class LossError(FlatlandError, ValueError):
    """Bad input to a loss (the message names the argument)."""


def _points(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != 3 or len(x) == 0:
        raise LossError(f"{name}: expected a non-empty (n, 3) tensor, got {getattr(x, 'shape', type(x))}")


def silhouette_loss(rendered: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between rendered and target silhouettes (same shape, values in [0, 1])."""
    if rendered.shape != target.shape:
        raise LossError(f"target: silhouettes of shape {tuple(target.shape)} do not match the rendered "
                        f"{tuple(rendered.shape)}")
    return ((rendered - target.to(rendered.dtype)) ** 2).mean()


def nearest(x: torch.Tensor, y: torch.Tensor, chunk: int = CHUNK, method: str = "kdtree") -> tuple[torch.Tensor, torch.Tensor]:
    """For each point of ``x``, the squared distance to its nearest point of ``y`` (differentiable) and its index.

    The index search needs no gradient: ``method="kdtree"`` (default) asks scipy's ``cKDTree``;
    ``"brute"`` compares all pairs in blocks of ``chunk`` query points (memory ``chunk * len(y)``).
    The distance is then recomputed in torch from the matched points, so gradients flow to both sets.
    """
    _points("x", x)
    _points("y", y)
    with torch.no_grad():
        if method == "kdtree":
            from scipy.spatial import cKDTree

            _, found = cKDTree(y.detach().cpu().double().numpy()).query(x.detach().cpu().double().numpy(), k=1)
            index = torch.as_tensor(found, dtype=torch.long, device=x.device)
        elif method == "brute":
            index = torch.cat([torch.cdist(x[start:start + chunk], y).argmin(dim=1)
                               for start in range(0, len(x), chunk)])
        else:
            raise LossError(f"method: must be 'kdtree' or 'brute', got {method!r}")
    return ((x - y[index]) ** 2).sum(dim=1), index


def chamfer_distance(x: torch.Tensor, y: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """Mean squared distance from ``x`` to its nearest points of ``y``, plus the same from ``y`` to ``x``."""
    return nearest(x, y, chunk)[0].mean() + nearest(y, x, chunk)[0].mean()


def sample_points(vertices: torch.Tensor, faces: torch.Tensor, count: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """``count`` points (count, 3) uniformly on the surface (area-weighted faces, uniform barycentrics).

    Differentiable in ``vertices``; the random draws come from ``generator``.
    """
    if count < 1:
        raise LossError(f"count: must be >= 1, got {count}")
    tri = vertices[faces]
    areas = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=1).detach()
    if not bool(areas.sum() > 0):
        raise LossError("mesh: total surface area is zero; nothing to sample")
    chosen = torch.multinomial(areas, count, replacement=True, generator=generator)
    r1 = torch.rand(count, 1, generator=generator, dtype=vertices.dtype).sqrt()
    r2 = torch.rand(count, 1, generator=generator, dtype=vertices.dtype)
    a, b, c = tri[chosen, 0], tri[chosen, 1], tri[chosen, 2]
    return (1 - r1) * a + r1 * (1 - r2) * b + r1 * r2 * c


def unique_edges(faces: torch.Tensor) -> torch.Tensor:
    """(e, 2) sorted vertex pairs, each edge once."""
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).sort(dim=1).values
    return torch.unique(edges, dim=0)


def edge_loss(vertices: torch.Tensor, faces: torch.Tensor, target_length: float = 0.0) -> torch.Tensor:
    """Mean over edges of ``(length - target_length)^2``."""
    edges = unique_edges(faces)
    length = (vertices[edges[:, 0]] - vertices[edges[:, 1]]).norm(dim=1)
    return ((length - target_length) ** 2).mean()


def face_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    tri = vertices[faces]
    n = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    return n / n.norm(dim=1, keepdim=True).clamp(min=1e-12)


def adjacent_faces(faces: torch.Tensor) -> torch.Tensor:
    """(k, 2) pairs of faces that share an edge (every pair among the faces of an edge)."""
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).sort(dim=1).values
    owner = torch.arange(len(faces), device=faces.device).repeat(3)
    _, inverse = torch.unique(edges, dim=0, return_inverse=True)
    order = torch.argsort(inverse, stable=True)
    inverse, owner = inverse[order], owner[order]
    pairs = []
    # an edge has at most a few faces: pair each face with the next ones of the same edge
    for shift in range(1, 4):
        same = inverse[shift:] == inverse[:-shift]
        if not bool(same.any()):
            break
        pairs.append(torch.stack([owner[:-shift][same], owner[shift:][same]], dim=1))
    return torch.cat(pairs) if pairs else torch.zeros(0, 2, dtype=torch.long, device=faces.device)


def normal_consistency(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Mean over pairs of faces sharing an edge of ``1 - cos`` of their normals (0 for a flat, consistently wound mesh)."""
    pairs = adjacent_faces(faces)
    if len(pairs) == 0:
        return vertices.sum() * 0.0
    n = face_normals(vertices, faces)
    return (1.0 - (n[pairs[:, 0]] * n[pairs[:, 1]]).sum(dim=1)).mean()


def uniform_laplacian(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(v, 3): mean of each vertex's neighbours minus the vertex (0 for isolated vertices)."""
    edges = unique_edges(faces)
    src = torch.cat([edges[:, 0], edges[:, 1]])
    dst = torch.cat([edges[:, 1], edges[:, 0]])
    total = torch.zeros_like(vertices).index_add(0, src, vertices[dst])
    degree = torch.zeros(len(vertices), dtype=vertices.dtype, device=vertices.device).index_add(
        0, src, torch.ones_like(src, dtype=vertices.dtype))
    mean = total / degree.clamp(min=1)[:, None]
    return torch.where(degree[:, None] > 0, mean - vertices, torch.zeros_like(vertices))


def laplacian_loss(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Mean over vertices of the norm of the uniform Laplacian (PyTorch3D's ``method="uniform"``)."""
    return uniform_laplacian(vertices, faces).norm(dim=1).mean()


def vertex_quadrics(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(v, 4, 4): per vertex, the sum of the plane quadrics ``p p^T`` (``p = [n, -n.a]``) of its faces."""
    n = face_normals(vertices, faces)
    d = -(n * vertices[faces[:, 0]]).sum(dim=1, keepdim=True)
    p = torch.cat([n, d], dim=1)
    q = p[:, :, None] * p[:, None, :]
    out = torch.zeros(len(vertices), 4, 4, dtype=vertices.dtype, device=vertices.device)
    for k in range(3):
        out = out.index_add(0, faces[:, k], q)
    return out


def quadric_loss(vertices: torch.Tensor, target_vertices: torch.Tensor, target_quadrics: torch.Tensor,
                 chunk: int = CHUNK) -> torch.Tensor:
    """Mean over ``vertices`` of ``v^T Q v``, ``Q`` the quadric of the nearest target vertex (:func:`vertex_quadrics`)."""
    _, index = nearest(vertices, target_vertices.to(vertices.dtype), chunk)
    homo = torch.cat([vertices, torch.ones_like(vertices[:, :1])], dim=1)
    q = target_quadrics.to(vertices.dtype)[index]
    return torch.einsum("vi,vij,vj->v", homo, q, homo).mean()


__all__ = ["LossError", "adjacent_faces", "chamfer_distance", "edge_loss", "face_normals", "laplacian_loss",
           "nearest", "normal_consistency", "quadric_loss", "sample_points", "silhouette_loss", "uniform_laplacian",
           "unique_edges", "vertex_quadrics"]
