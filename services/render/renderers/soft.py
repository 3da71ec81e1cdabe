"""A differentiable soft silhouette rasteriser for triangle meshes, in plain torch.

Written here because PyTorch3D, Kaolin and nvdiffrast have no installable build on this
platform. It follows SoftRas (Liu et al. 2019) and PyTorch3D's ``SoftSilhouetteShader``:
every face ``j`` covers pixel ``p`` with probability

    D_j(p) = sigmoid(s_j(p) * d_j(p)^2 / sigma)

where ``d_j(p)`` is the screen-space distance (pixels) from the pixel centre to the
triangle's boundary and ``s_j(p)`` is +1 inside, -1 outside; the silhouette aggregates them
by probabilistic union, ``S(p) = 1 - prod_j (1 - D_j(p))``. ``sigma`` is in pixels^2 (PyTorch3D's
default ``1e-4`` in NDC^2 is ``1e-4 * (W/2)^2`` px^2, 0.41 px^2 at 128 px). As ``sigma -> 0``,
``S`` tends to the hard silhouette: 1 where a pixel centre lies inside a projected face.

Cameras are the ones recorded with every render (:mod:`services.render.sampling`): the record's
``camera.pose`` (camera-to-world, OpenGL: looking down -z, +y up), ``camera.intrinsics``
(``fx, fy, cx, cy`` in pixels; pixel ``(row, col)`` has its centre at ``(col + 0.5, row + 0.5)``,
rows from the top, as pyrender's ``IntrinsicsCamera`` draws) and ``object.pose``
(object-to-world). :func:`cameras_from_records` turns records into the two tensors this
module needs.

Memory and speed: a face only touches pixels within its screen bounding box grown by the
distance where ``D_j`` falls below 1e-4 (as PyTorch3D's blur radius), so only those (face, pixel)
pairs are built, over square per-face pixel tiles grouped by tile size, in chunks of at most
``chunk_pairs`` pairs. The backward pass is written by hand (:class:`_SoftTiles`) and recomputes
each chunk, so nothing per pair is kept between the passes: memory stays one chunk's worth
whatever the mesh size or view count (a 10k-face mesh, 20 views at 128 px: well under 2 GiB, tested).
Faces with a vertex at or behind the near plane
are dropped (silhouette fitting keeps the object in front of every camera).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from services.common.errors import FlatlandError

CUTOFF = math.log(1e4)  # a face's probability is dropped below 1e-4 (PyTorch3D's blur radius: log(1/1e-4 - 1) sigma)
DEFAULT_SIGMA = 0.5  # px^2
DEFAULT_CHUNK_PAIRS = 1 << 21  # (face, pixel) pairs per chunk: ~2M pairs, ~300 MB of float32 work space


class SoftRasterError(FlatlandError, ValueError):
    """Bad input to the soft rasteriser (the message names the argument)."""


@dataclass
class Cameras:
    """A batch of ``n`` pinhole views.

    Attributes
    ----------
    object_to_camera : (n, 4, 4) tensor
        ``inverse(camera.pose) @ object.pose``: object coordinates to OpenGL camera coordinates.
    intrinsics : (n, 4) tensor
        ``fx, fy, cx, cy`` in pixels.
    image_size : int
        Square image side in pixels.
    znear : (n,) tensor
        Near-plane distance of each view (faces in front of it are dropped).
    """

    object_to_camera: torch.Tensor
    intrinsics: torch.Tensor
    image_size: int
    znear: torch.Tensor

    def __len__(self) -> int:
        return int(self.object_to_camera.shape[0])

    def to(self, dtype: torch.dtype) -> "Cameras":
        return Cameras(self.object_to_camera.to(dtype), self.intrinsics.to(dtype), self.image_size, self.znear.to(dtype))

    def subset(self, index) -> "Cameras":
        index = torch.as_tensor(index, dtype=torch.long)
        return Cameras(self.object_to_camera[index], self.intrinsics[index], self.image_size, self.znear[index])


def cameras_from_records(records: list[dict], dtype: torch.dtype = torch.float32) -> Cameras:
    """The cameras of render records (each needs ``image_size``, ``camera`` and ``object.pose``; all one size)."""
    if not records:
        raise SoftRasterError("records: need at least one render record")
    sizes = {int(r.get("image_size", -1)) if isinstance(r, dict) else -1 for r in records}
    if len(sizes) != 1 or min(sizes) < 1:
        raise SoftRasterError(f"records: every record needs the same positive image_size, got {sorted(sizes)}")
    mats, intr, near = [], [], []
    for i, record in enumerate(records):
        try:
            camera = record["camera"]
            pose = np.asarray(camera["pose"], dtype=float)
            obj = np.asarray(record.get("object", {}).get("pose", np.eye(4)), dtype=float)
            k = camera["intrinsics"]
            fx, fy, cx, cy = (float(k[name]) for name in ("fx", "fy", "cx", "cy"))
            znear = float(camera.get("znear", 1e-3))
        except (KeyError, TypeError, ValueError) as exc:
            raise SoftRasterError(f"records[{i}]: needs camera.pose (4x4), camera.intrinsics (fx, fy, cx, cy) "
                                  f"and object.pose (4x4): {type(exc).__name__}: {exc}") from None
        if record.get("planar") is not None:
            raise SoftRasterError(f"records[{i}]: has a 2D 'planar' warp (FlatWorld); only plain camera views can be "
                                  "rasterised")
        if pose.shape != (4, 4) or obj.shape != (4, 4) or not (np.isfinite(pose).all() and np.isfinite(obj).all()):
            raise SoftRasterError(f"records[{i}]: camera.pose and object.pose must be finite 4x4 matrices")
        if not (fx > 0 and fy > 0):
            raise SoftRasterError(f"records[{i}].camera.intrinsics: fx and fy must be > 0, got {fx}, {fy}")
        mats.append(np.linalg.inv(pose) @ obj)
        intr.append([fx, fy, cx, cy])
        near.append(znear)
    return Cameras(torch.as_tensor(np.stack(mats), dtype=dtype), torch.as_tensor(intr, dtype=dtype),
                   sizes.pop(), torch.as_tensor(near, dtype=dtype))


def project(vertices: torch.Tensor, cameras: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates (n, v, 2) (x right, y down, pixel centres at +0.5) and depths (n, v) of ``vertices``."""
    homo = torch.cat([vertices, torch.ones_like(vertices[:, :1])], dim=1)  # (v, 4)
    cam = torch.einsum("nij,vj->nvi", cameras.object_to_camera, homo)[..., :3]
    depth = -cam[..., 2]
    safe = torch.where(depth.abs() > 1e-12, depth, torch.full_like(depth, 1e-12))
    fx, fy, cx, cy = (cameras.intrinsics[:, i:i + 1] for i in range(4))
    x = cx + fx * cam[..., 0] / safe
    y = cy - fy * cam[..., 1] / safe
    return torch.stack([x, y], dim=-1), depth


def _check(vertices: torch.Tensor, faces: torch.Tensor, cameras: Cameras, sigma: float) -> None:
    if not isinstance(vertices, torch.Tensor) or vertices.ndim != 2 or vertices.shape[1] != 3:
        raise SoftRasterError(f"vertices: expected a (v, 3) tensor, got {getattr(vertices, 'shape', type(vertices))}")
    if not isinstance(faces, torch.Tensor) or faces.ndim != 2 or faces.shape[1] != 3 or faces.dtype not in (
            torch.int32, torch.int64):
        raise SoftRasterError(f"faces: expected a (f, 3) integer tensor, got {getattr(faces, 'shape', type(faces))}")
    if len(faces) and (int(faces.min()) < 0 or int(faces.max()) >= len(vertices)):
        raise SoftRasterError(f"faces: indices must lie in [0, {len(vertices)}), got [{int(faces.min())}, "
                              f"{int(faces.max())}]")
    if not bool(torch.isfinite(vertices).all()):
        raise SoftRasterError("vertices: contain NaN or infinite coordinates")
    if not (sigma > 0 and math.isfinite(sigma)):
        raise SoftRasterError(f"sigma: must be a positive finite number (pixels^2), got {sigma}")
    if len(cameras) == 0:
        raise SoftRasterError("cameras: need at least one view")


def _pairs_plan(uv: torch.Tensor, depth: torch.Tensor, faces: torch.Tensor, cameras: Cameras, sigma: float):
    """Per kept (view, face): view, face, pixel box origin x0, y0 and size nx, ny (no gradient; culled faces dropped)."""
    size = cameras.image_size
    with torch.no_grad():
        tri = uv[:, faces]  # (n, f, 3, 2)
        margin = math.sqrt(CUTOFF * sigma)
        lo = tri.amin(dim=2) - margin - 0.5
        hi = tri.amax(dim=2) + margin - 0.5
        x0 = torch.ceil(lo[..., 0]).clamp(min=0)
        y0 = torch.ceil(lo[..., 1]).clamp(min=0)
        x1 = torch.floor(hi[..., 0]).clamp(max=size - 1)
        y1 = torch.floor(hi[..., 1]).clamp(max=size - 1)
        nx = (x1 - x0 + 1).clamp(min=0)
        ny = (y1 - y0 + 1).clamp(min=0)
        front = (depth[:, faces] > cameras.znear[:, None, None]).all(dim=2)
        e1, e2 = tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0]
        area2 = (e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0]).abs()
        keep = front & (area2 > 1e-12) & (nx > 0) & (ny > 0)
        view_id, face_id = keep.nonzero(as_tuple=True)
        return (view_id, face_id, x0[view_id, face_id].long(), y0[view_id, face_id].long(), nx[view_id, face_id].long(),
                ny[view_id, face_id].long())


# square tile sides (pixels): few shapes keep per-chunk overhead low, ratios <= 1.5 keep padding low
TILE_SIZES = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)


def _tile(n: torch.Tensor) -> torch.Tensor:
    """The smallest tile side in :data:`TILE_SIZES` (or a multiple of 64 beyond) that holds ``n`` pixels."""
    sizes = torch.as_tensor(TILE_SIZES, device=n.device)
    index = torch.searchsorted(sizes, n.clamp(max=TILE_SIZES[-1]))
    return torch.where(n > TILE_SIZES[-1], (n + 63) // 64 * 64, sizes[index])


def _edge(px, py, ax, ay, bx, by):
    """Pixel centres against segment ``a b`` (broadcast over a tile): squared distance, clamped ``t``, ``q``, edge function.

    ``q = p - (a + t (b - a))`` is the offset from the nearest point of the segment.
    """
    abx, aby = bx - ax, by - ay
    apx, apy = px - ax, py - ay  # (e, 1, tx) and (e, ty, 1)
    inv = 1.0 / (abx * abx + aby * aby).clamp(min=1e-12)
    t = ((apx * abx + apy * aby) * inv).clamp(0.0, 1.0)
    qx, qy = apx - t * abx, apy - t * aby
    return qx * qx + qy * qy, t, qx, qy, abx * apy - aby * apx


def _tile_terms(flat_u, flat_v, rows, x0, y0, nx, ny, tile: int, view, size: int, sigma: float, total: int):
    """The per-pair quantities of one chunk of faces over their (tile, tile) pixel boxes (no autograd)."""
    a = (flat_u[rows[0]][:, None, None], flat_v[rows[0]][:, None, None])
    b = (flat_u[rows[1]][:, None, None], flat_v[rows[1]][:, None, None])
    c = (flat_u[rows[2]][:, None, None], flat_v[rows[2]][:, None, None])
    offset = torch.arange(tile, device=x0.device)
    px = x0[:, None, None] + offset[None, None, :]  # (e, 1, tile)
    py = y0[:, None, None] + offset[None, :, None]  # (e, tile, 1)
    valid = (offset[None, None, :] < nx[:, None, None]) & (offset[None, :, None] < ny[:, None, None])
    pixel = torch.where(valid, (view[:, None, None] * size + py) * size + px, total)
    px = px.to(flat_u.dtype) + 0.5
    py = py.to(flat_u.dtype) + 0.5
    edges = [_edge(px, py, *a, *b), _edge(px, py, *b, *c), _edge(px, py, *c, *a)]
    d2 = torch.stack([e[0] for e in edges])  # (3, e, tile, tile)
    dist2, nearest_edge = d2.min(dim=0)
    w0, w1, w2 = (e[4] for e in edges)
    # inside: the three edge functions share a sign (either winding: silhouettes are two-sided)
    inside = ((w0 >= 0) & (w1 >= 0) & (w2 >= 0)) | ((w0 <= 0) & (w1 <= 0) & (w2 <= 0))
    scaled = torch.where(inside, dist2, -dist2) / sigma
    return pixel, scaled, inside, nearest_edge, edges


class _SoftTiles(torch.autograd.Function):
    """``sum softplus(s d^2 / sigma) = -log prod (1 - D)`` per pixel for one chunk of faces, with a hand-written
    backward pass that recomputes the chunk (so nothing per pair is kept between the passes: memory stays one
    chunk's worth, and no autograd graph is built over millions of pairs).

    Gradient: ``d softplus(x)/dx = sigmoid(x)``, ``x = s d^2 / sigma``; for the nearest edge ``(i, j)`` of a pixel,
    with ``q`` the offset from its nearest point ``i + t (j - i)``: ``d(d^2)/d(i) = -2 q (1 - t)``,
    ``d(d^2)/d(j) = -2 q t`` (the ``t`` term vanishes: ``q`` is orthogonal to the edge, or ``t`` is clamped).
    """

    @staticmethod
    def forward(ctx, flat_u, flat_v, rows, x0, y0, nx, ny, tile, view, size, sigma, total):
        pixel, scaled, _, _, _ = _tile_terms(flat_u, flat_v, rows, x0, y0, nx, ny, tile, view, size, sigma, total)
        ctx.save_for_backward(flat_u, flat_v, rows, x0, y0, nx, ny, view)
        ctx.args = (tile, size, sigma, total)
        out = torch.zeros(total + 1, dtype=flat_u.dtype, device=flat_u.device)
        return out.index_add_(0, pixel.reshape(-1), torch.nn.functional.softplus(scaled).reshape(-1))[:total]

    @staticmethod
    def backward(ctx, grad):
        flat_u, flat_v, rows, x0, y0, nx, ny, view = ctx.saved_tensors
        tile, size, sigma, total = ctx.args
        pixel, scaled, inside, nearest_edge, edges = _tile_terms(flat_u, flat_v, rows, x0, y0, nx, ny, tile, view,
                                                                  size, sigma, total)
        g = torch.cat([grad, grad.new_zeros(1)])[pixel]  # the dump slot has no gradient
        # d loss / d(d^2), with the sign of the inside/outside flip; then -2 of d(d^2)/d(vertex)
        coeff = g * torch.sigmoid(scaled) * torch.where(inside, 2.0, -2.0).to(g.dtype) / sigma
        grads = [[None, None] for _ in range(3)]  # per corner a, b, c: (du, dv) per face
        for k, (_, t, qx, qy, _) in enumerate(edges):
            w = torch.where(nearest_edge == k, coeff, torch.zeros_like(coeff))
            start, end = k, (k + 1) % 3
            for corner, factor in ((start, 1.0 - t), (end, t)):
                gu = -(w * qx * factor).sum(dim=(1, 2))
                gv = -(w * qy * factor).sum(dim=(1, 2))
                grads[corner][0] = gu if grads[corner][0] is None else grads[corner][0] + gu
                grads[corner][1] = gv if grads[corner][1] is None else grads[corner][1] + gv
        grad_u = torch.zeros_like(flat_u)
        grad_v = torch.zeros_like(flat_v)
        for corner in range(3):
            grad_u.index_add_(0, rows[corner], grads[corner][0])
            grad_v.index_add_(0, rows[corner], grads[corner][1])
        return grad_u, grad_v, *([None] * 10)


def soft_silhouette(vertices: torch.Tensor, faces: torch.Tensor, cameras: Cameras, sigma: float = DEFAULT_SIGMA,
                    chunk_pairs: int = DEFAULT_CHUNK_PAIRS) -> torch.Tensor:
    """Soft silhouettes (n, H, W) in [0, 1] of one mesh seen by every camera; differentiable in ``vertices``.

    Parameters
    ----------
    vertices : (v, 3) float tensor
        Object coordinates (what ``object.pose`` of the records maps to the world).
    faces : (f, 3) int64 tensor
    cameras : Cameras
        From :func:`cameras_from_records`.
    sigma : float
        Edge sharpness in pixels^2; smaller is sharper (``1e-8`` gives the hard silhouette).
    chunk_pairs : int
        Most (face, pixel) pairs held at once; bounds memory (forward and backward).
    """
    _check(vertices, faces, cameras, sigma)
    if chunk_pairs < 1:
        raise SoftRasterError(f"chunk_pairs: must be >= 1, got {chunk_pairs}")
    faces = faces.long()
    cameras = cameras.to(vertices.dtype)
    n, size = len(cameras), cameras.image_size
    uv, depth = project(vertices, cameras)
    view_id, face_id, x0, y0, nx, ny = _pairs_plan(uv, depth, faces, cameras, sigma)
    total = n * size * size
    flat_u, flat_v = uv[..., 0].reshape(-1), uv[..., 1].reshape(-1)
    rows = (view_id[:, None] * uv.shape[1] + faces[face_id]).T  # (3, entries): rows of flat_u / flat_v
    tx = ty = _tile(torch.maximum(nx, ny))
    # group the (view, face) entries by tile shape, then cut each group into chunks of <= chunk_pairs pairs
    chunks = []
    if len(tx):
        key = ty * 100_000 + tx
        order = torch.argsort(key, stable=True)
        keys, counts = torch.unique_consecutive(key[order], return_counts=True)
        start = 0
        for k, c in zip(keys.tolist(), counts.tolist()):
            h, w = divmod(k, 100_000)
            step = max(1, chunk_pairs // (h * w))
            for s in range(start, start + c, step):
                chunks.append((order[s:min(s + step, start + c)], w, h))
            start += c
    log_t = torch.zeros(total, dtype=vertices.dtype, device=vertices.device)
    for index, w, h in chunks:
        log_t = log_t + _SoftTiles.apply(flat_u, flat_v, rows[:, index].contiguous(), x0[index], y0[index], nx[index],
                                         ny[index], w, view_id[index], size, float(sigma), total)
    return (-torch.expm1(-log_t)).reshape(n, size, size)


def orbit_records(azimuths_deg, elevations_deg, *, image_size: int, centre, radius: float, fov_deg: float = 30.0,
                  margin: float = 1.1) -> list[dict]:
    """Render records (the fields :func:`cameras_from_records` and the GL renderer read) of cameras around a mesh.

    The object's ``centre`` goes to the origin (``object.pose``) and each camera looks at it from
    ``direction(azimuth, elevation)`` at the distance where the bounding sphere (``radius``, times
    ``margin``) just fits the field of view, as :mod:`services.render.sampling` places ``distance: auto``
    cameras; lights are one head light, the material the render default.
    """
    from services.common.spec.render import MaterialSpec
    from services.render.sampling import RECORD_VERSION, direction, intrinsics, look_at

    if len(azimuths_deg) != len(elevations_deg) or len(azimuths_deg) == 0:
        raise SoftRasterError(f"azimuths_deg, elevations_deg: need the same non-zero number of angles, got "
                              f"{len(azimuths_deg)} and {len(elevations_deg)}")
    if not (radius > 0 and math.isfinite(radius)):
        raise SoftRasterError(f"radius: must be a positive finite number, got {radius}")
    distance = margin * radius / math.sin(math.radians(fov_deg) / 2)
    object_pose = np.eye(4)
    object_pose[:3, 3] = -np.asarray(centre, dtype=float)
    records = []
    for az, el in zip(azimuths_deg, elevations_deg):
        pose = look_at(direction(float(az), float(el)) * distance, np.zeros(3))
        records.append({
            "kind": "mesh", "version": RECORD_VERSION, "image_size": int(image_size), "backend": "auto",
            "camera": {"pose": pose.tolist(), "azimuth_deg": float(az), "elevation_deg": float(el), "roll_deg": 0.0,
                       "fov_deg": fov_deg, "distance": distance, "znear": max(1e-3, (distance - radius) * 0.5),
                       "zfar": distance + 2.0 * radius, "intrinsics": intrinsics(int(image_size), fov_deg)},
            "lights": [{"kind": "directional", "intensity": 3.0, "color": [1.0, 1.0, 1.0], "pose": pose.tolist()}],
            "ambient": 0.3, "material": MaterialSpec().model_dump(mode="json"),
            "object": {"scale": 1.0, "centre": [float(c) for c in centre], "radius": float(radius),
                       "pose": object_pose.tolist()},
            "background": {"kind": "plain", "color": [0.0, 0.0, 0.0]},
        })
    return records


def render_masks(mesh, records: list[dict]) -> np.ndarray:
    """(n, H, W) bool silhouettes of a trimesh drawn by the GL renderer (pyrender) from ``records``."""
    from services.render.renderers.gl import SceneRenderer

    size = int(records[0]["image_size"])
    with SceneRenderer(size, records[0].get("backend", "auto")) as renderer:
        renderer.set_mesh(mesh, records[0]["material"])
        return np.stack([renderer.render(record).mask for record in records])


def hard_silhouette(vertices, faces, cameras: Cameras, chunk_pairs: int = DEFAULT_CHUNK_PAIRS) -> np.ndarray:
    """(n, H, W) bool: pixel centres covered by a projected face (the ``sigma -> 0`` limit)."""
    with torch.no_grad():
        v = torch.as_tensor(np.asarray(vertices), dtype=torch.float64)
        f = torch.as_tensor(np.asarray(faces), dtype=torch.int64)
        return (soft_silhouette(v, f, cameras, sigma=1e-8, chunk_pairs=chunk_pairs) > 0.5).numpy()


__all__ = ["Cameras", "DEFAULT_SIGMA", "SoftRasterError", "cameras_from_records", "hard_silhouette", "orbit_records",
           "project", "render_masks", "soft_silhouette"]
