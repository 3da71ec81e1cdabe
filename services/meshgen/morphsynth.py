"""MorphSynthDB: Gaussian-process morphs of procsynth meshes (shape and per-vertex albedo).

What a class is. The proposal starts "from the first 100 ProcSynthDB meshes and
add[s] random shape and color variation to them to obtain new shapes". Class ``c``
is one new shape: procsynth class ``c % base_classes`` (drawn with the same root
seed and procsynth's seed path, so it is exactly class ``c % base_classes`` of a
procsynth dataset with the same ``base`` parameters and seed), quadric-decimated
to at most ``max_vertices`` vertices, then deformed once by a class-level draw of
two zero-mean Gaussian processes on its surface (Lüthi et al. 2017; Sutherland,
Egger & Tenenbaum 2021), seeded by the class:

* shape: a displacement field u(x) in R^3, kernel k(x, y) I_3 with
  k(x, y) = Σ_t scale_t² exp(-‖x - y‖² / length_scale_t²);
* albedo: an RGB offset field added to ``base_albedo``, kernel k_a(x, y) C where C
  is the 3x3 channel correlation matrix (1 on the diagonal,
  ``albedo_channel_correlation`` off it).

Classes ``c`` and ``c + base_classes`` share a base mesh but not a morph, so no
two classes share a distribution. The images of a class vary in pose and
illumination (the render stage draws those per view). Only when
``instance_scale`` > 0 do the instances of a class differ in shape and albedo too:
each adds its own draw of the same two processes with every kernel scale
multiplied by ``instance_scale`` (< 1, so instance variation stays smaller than
the variation between classes of one base). With the default 0 every instance of a
class is the same mesh (equal bytes).

Units. Positions are divided by the base mesh's size D (its bounding-box
diagonal) before the kernel is evaluated, so ``length_scale`` is a fraction of
the object's size, and ``scale`` is the marginal standard deviation of each
displacement component in units of D (albedo: in RGB units on [0, 1]). How the
proposal's b_s, c_s, b_a, c_a map onto these is derived in the docstring of
:class:`services.common.spec.meshgen.MorphSynthParams` and in docs/morphsynth.md.

Sampling (truncated Karhunen–Loève with the Nyström method; never a dense draw
over all vertices): ``nystrom_points`` points X_m are drawn on the surface
(area-weighted); K_mm = U Λ Uᵀ; the leading ``eigen_components`` eigenpairs give
the basis B = K(x, X_m) U_k Λ_k^{-1/2} at every vertex x (so B Bᵀ is the Nyström
approximation of K); a sample is B α with α ~ N(0, I). The basis is computed once
per class (:class:`GPBasis`); the class morph and each instance-level morph cost one
(n, k) @ (k, 3) product per field.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh

from services.common.seeds import rng_from_seed
from services.common.spec.meshgen import GPKernelTerm, MorphSynthParams


def decimate(mesh: trimesh.Trimesh, max_vertices: int) -> trimesh.Trimesh:
    """Quadric decimation (fast-simplification via trimesh) to at most ``max_vertices`` vertices.

    Unreferenced and duplicate vertices are dropped first; a mesh already small
    enough is returned with only that clean-up.
    """
    mesh = trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces, process=True)  # merge duplicate vertices
    if len(mesh.vertices) <= max_vertices:
        return mesh
    # unions of primitives have about as many vertices as faces (open wireframe tubes), so aim the
    # face count at the vertex bound by the mesh's own ratio, and tighten from the original if needed
    ratio = len(mesh.faces) / len(mesh.vertices)
    for shrink in (0.98, 0.9, 0.8, 0.65, 0.5, 0.35, 0.2):
        target = max(4, int(max_vertices * ratio * shrink))
        simple = mesh.simplify_quadric_decimation(face_count=min(target, len(mesh.faces) - 1))
        simple.remove_unreferenced_vertices()
        if len(simple.vertices) <= max_vertices:
            return simple
    raise RuntimeError(f"decimation could not bring {len(mesh.vertices)} vertices under max_vertices={max_vertices}")


def kernel_matrix(x: np.ndarray, y: np.ndarray, terms: list[GPKernelTerm]) -> np.ndarray:
    """Σ_t scale_t² exp(-‖x - y‖² / length_scale_t²).

    Parameters
    ----------
    x : (n, 3) float
    y : (m, 3) float
        Positions in units of the mesh size.
    terms : list of GPKernelTerm

    Returns
    -------
    k : (n, m) float
    """
    sq = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
    np.maximum(sq, 0.0, out=sq)
    out = np.zeros_like(sq)
    for term in terms:
        out += term.scale**2 * np.exp(-sq / term.length_scale**2)
    return out


def surface_points(mesh: trimesh.Trimesh, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` area-weighted random points on the surface, shape (count, 3)."""
    areas = mesh.area_faces
    faces = rng.choice(len(areas), size=count, p=areas / areas.sum())
    r = rng.random((count, 2))
    flip = r.sum(1) > 1.0
    r[flip] = 1.0 - r[flip]  # fold the unit square onto the triangle
    tri = mesh.triangles[faces]
    return tri[:, 0] + r[:, [0]] * (tri[:, 1] - tri[:, 0]) + r[:, [1]] * (tri[:, 2] - tri[:, 0])


@dataclass
class GPBasis:
    """Truncated KL basis of one GP kernel at a mesh's vertices.

    Attributes
    ----------
    basis : (n, k) float
        B = K(x, X_m) U_k Λ_k^{-1/2}; a sample of the scalar GP at the vertices is B @ α.
    eigenvalues : (k,) float
        Leading eigenvalues Λ_k of the Nyström kernel matrix.
    """

    basis: np.ndarray
    eigenvalues: np.ndarray

    @classmethod
    def build(cls, points: np.ndarray, nystrom: np.ndarray, terms: list[GPKernelTerm], components: int) -> "GPBasis":
        """KL basis at ``points`` (n, 3) from Nyström points ``nystrom`` (m, 3), both normalised."""
        k_mm = kernel_matrix(nystrom, nystrom, terms)
        eigenvalues, eigenvectors = np.linalg.eigh(k_mm)
        order = np.argsort(eigenvalues)[::-1][:components]
        eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
        # numerically zero directions carry no variance and would blow up Λ^{-1/2}
        keep = eigenvalues > 1e-9 * eigenvalues[0]
        eigenvalues, eigenvectors = eigenvalues[keep], eigenvectors[:, keep]
        basis = kernel_matrix(points, nystrom, terms) @ (eigenvectors / np.sqrt(eigenvalues))
        return cls(basis=basis, eigenvalues=eigenvalues)

    def sample(self, rng: np.random.Generator, channels: int = 3, mixing: np.ndarray | None = None) -> np.ndarray:
        """A sample of ``channels`` GP components at every vertex, shape (n, channels).

        ``mixing`` (channels, channels) is a Cholesky factor of the channel covariance.
        """
        alpha = rng.standard_normal((self.basis.shape[1], channels))
        if mixing is not None:
            alpha = alpha @ mixing.T
        return self.basis @ alpha


@dataclass
class MorphModel:
    """A decimated base mesh with its shape and albedo GP bases (computed once per class)."""

    mesh: trimesh.Trimesh
    size: float
    shape_basis: GPBasis
    albedo_basis: GPBasis
    albedo_mixing: np.ndarray

    @classmethod
    def build(cls, base: trimesh.Trimesh, params: MorphSynthParams, seed: int) -> "MorphModel":
        """Decimate ``base`` and build both bases; Nyström points come from ``seed``'s stream."""
        mesh = decimate(base, params.max_vertices)
        lo, hi = mesh.bounds
        size = float(np.linalg.norm(hi - lo))
        centre = 0.5 * (lo + hi)
        rng = rng_from_seed(seed)
        nystrom = (surface_points(mesh, params.nystrom_points, rng) - centre) / size
        points = (mesh.vertices - centre) / size
        rho = params.albedo_channel_correlation
        correlation = np.full((3, 3), rho) + (1.0 - rho) * np.eye(3)
        # rho = 1 makes C singular; a tiny jitter keeps Cholesky defined without changing the field visibly
        mixing = np.linalg.cholesky(correlation + 1e-9 * np.eye(3))
        return cls(
            mesh=mesh,
            size=size,
            shape_basis=GPBasis.build(points, nystrom, params.shape_kernel, params.eigen_components),
            albedo_basis=GPBasis.build(points, nystrom, params.albedo_kernel, params.eigen_components),
            albedo_mixing=mixing,
        )

    def draw(self, rng: np.random.Generator, factor: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """One draw of both fields at ``factor`` times every kernel scale.

        Returns
        -------
        displacement : (n, 3) float
            In mesh units.
        albedo_offset : (n, 3) float
            In RGB units on [0, 1].
        """
        displacement = factor * self.size * self.shape_basis.sample(rng)
        albedo_offset = factor * self.albedo_basis.sample(rng, mixing=self.albedo_mixing)
        return displacement, albedo_offset

    def sample(self, params: MorphSynthParams, seed: int, instance_seed: int | None = None) -> tuple[trimesh.Trimesh, dict]:
        """One morph: deformed vertices and per-vertex RGBA colours, plus statistics.

        ``seed`` draws the class-level morph (full kernel scales). With
        ``params.instance_scale`` > 0 and an ``instance_seed``, an instance-level
        draw at ``instance_scale`` times the kernel scales is added on top;
        otherwise the result depends on ``seed`` alone.
        """
        displacement, offset = self.draw(rng_from_seed(seed))
        instance_rms = 0.0
        if params.instance_scale > 0 and instance_seed is not None:
            extra, extra_offset = self.draw(rng_from_seed(instance_seed), params.instance_scale)
            displacement = displacement + extra
            offset = offset + extra_offset
            instance_rms = float(np.sqrt((extra**2).sum(1).mean()) / self.size)
        albedo = np.asarray(params.base_albedo) + offset
        rgba = np.empty((len(albedo), 4), dtype=np.uint8)
        rgba[:, :3] = np.round(np.clip(albedo, 0.0, 1.0) * 255.0).astype(np.uint8)
        rgba[:, 3] = 255
        mesh = trimesh.Trimesh(
            vertices=self.mesh.vertices + displacement, faces=self.mesh.faces, vertex_colors=rgba, process=False
        )
        norms = np.linalg.norm(displacement, axis=1)
        stats = {
            "base_vertices": int(len(self.mesh.vertices)),
            "displacement_rms": round(float(np.sqrt((norms**2).mean()) / self.size), 6),
            "displacement_max": round(float(norms.max() / self.size), 6),
            "instance_displacement_rms": round(instance_rms, 6),
            "albedo_std": round(float(albedo.std(axis=0).mean()), 6),
            "shape_components": int(self.shape_basis.basis.shape[1]),
            "albedo_components": int(self.albedo_basis.basis.shape[1]),
        }
        return mesh, stats
