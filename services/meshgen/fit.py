"""Meshes from images: an ico-sphere deformed until its silhouettes (or its surface) match a target.

As published (and as PyTorch3D's mesh-fitting tutorials): start from
``trimesh.creation.icosphere(level)``, optimise per-vertex offsets with Adam (default here: measured
better in 300 steps, docs/fitting.md) or SGD with momentum (as published) under weighted losses
(:mod:`services.meshgen.losses`): the silhouette L2 loss of soft
silhouettes from the render stage's differentiable rasteriser (read through
``services.render.api``) against the target masks, or, for a 3D target, the chamfer and quadric
losses; edge, normal-consistency and Laplacian losses regularise both.

Targets (:class:`FitTarget`):

- :func:`target_from_mesh`: a mesh; its silhouettes are drawn by the GL renderer from ``views``
  cameras (elevations 0..180, azimuths -180..180 degrees: :func:`orbit_angles`) plus ``held_out_views`` others never
  fitted; with ``target_mode: mesh`` its surface is fitted directly (3D-to-3D).
- :func:`target_from_masks`: silhouettes (``n, H, W``) with their render records (the cameras as
  recorded with every render: ``camera.pose``, ``camera.intrinsics``, ``object.pose``).

The fit runs in the target's normalised frame (centre 0, bounding radius 1); the fitted mesh is
returned in the target's object coordinates. Metrics (:func:`mesh_metrics`): chamfer distance and
F-score against the true mesh where there is one (normalised units), silhouette IoU on the
held-out views (the fitted mesh's hard silhouette from the same rasteriser at ``sigma -> 0``,
which agrees with pyrender to IoU >= 0.99, see ``tests/render/test_soft.py``).

:func:`write_fit` stores ``fits/<fit_id>/``: ``mesh.glb``, ``losses.jsonl`` (one row per logged
step), ``losses.png`` and ``metrics.json``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
import trimesh

from services.common.errors import FlatlandError
from services.common.manifest import ManifestEntry, put_with_entry
from services.common.spec.meshgen import FitParams
from services.common.store import Store
from services.meshgen import losses as L
from services.meshgen.api import fit_key
from services.render import api as render_api

LOSS_NAMES = ("silhouette", "chamfer", "quadric", "edge", "normal", "laplacian")


class FitError(FlatlandError, ValueError):
    """A fit that cannot start (bad target, masks and records that disagree); the message names the input."""


@dataclass
class FitTarget:
    """What a fit aims at: silhouettes with their records, and/or a mesh.

    ``masks``/``records`` are the fitted views; ``held_masks``/``held_records`` the held-out ones.
    ``centre``/``radius`` give the normalised frame (object coordinates).
    """

    centre: np.ndarray
    radius: float
    masks: np.ndarray | None = None
    records: list[dict] | None = None
    held_masks: np.ndarray | None = None
    held_records: list[dict] | None = None
    mesh: trimesh.Trimesh | None = None
    mode: str = "silhouettes"


@dataclass
class FitStep:
    """Progress after ``iteration`` of ``total`` steps: the weighted total and each (unweighted) loss."""

    iteration: int
    total: int
    loss: float
    losses: dict
    seconds: float


@dataclass
class FitResult:
    mesh: trimesh.Trimesh
    metrics: dict
    history: list[dict] = field(default_factory=list)
    timing: dict = field(default_factory=dict)


GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def orbit_angles(views: int) -> tuple[np.ndarray, np.ndarray]:
    """``views`` directions with elevations 0..180 and azimuths -180..180 degrees (the published ranges).

    Elevations step evenly; azimuths follow a golden-ratio sequence, so the views spread over every
    direction. (Pairing both ranges linearly, as PyTorch3D's tutorial does with elevations to 360, puts
    every view on one side of the object, x <= 0, when elevations stop at 180: the other side is never
    constrained, and views of it fail.)
    """
    k = np.arange(views)
    return -180.0 + 360.0 * ((k * GOLDEN) % 1.0), 180.0 * (k + 0.5) / views


def held_out_angles(views: int) -> tuple[np.ndarray, np.ndarray]:
    """``views`` directions from the fitted views' range but not on their orbit: azimuths offset by 17 degrees,
    elevations in reverse order (0..180 covers the upper hemisphere only, so held-out views stay within it)."""
    k = (np.arange(views) + 0.5) / max(views, 1)
    return -180.0 + 360.0 * k + 17.0, 180.0 * k[::-1]


def _check_mesh(mesh: trimesh.Trimesh, name: str = "mesh") -> trimesh.Trimesh:
    if isinstance(mesh, trimesh.Scene):
        mesh = mesh.to_geometry() if hasattr(mesh, "to_geometry") else mesh.dump(concatenate=True)
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise FitError(f"{name}: expected a triangle mesh with faces, got {type(mesh).__name__}")
    if not np.isfinite(mesh.vertices).all() or float(np.ptp(mesh.vertices, axis=0).max()) <= 0:
        raise FitError(f"{name}: vertices must be finite and span a non-zero extent")
    return mesh


def mesh_frame(mesh: trimesh.Trimesh) -> tuple[np.ndarray, float]:
    centre = mesh.bounds.mean(axis=0)
    return centre, float(np.sqrt(((mesh.vertices - centre) ** 2).sum(axis=1).max()))


def target_from_mesh(mesh: trimesh.Trimesh, params: FitParams) -> FitTarget:
    """A mesh target: its silhouettes from ``params.views`` (+ held-out) cameras, drawn by the GL renderer."""
    mesh = _check_mesh(mesh)
    centre, radius = mesh_frame(mesh)
    target = FitTarget(centre=centre, radius=radius, mesh=mesh, mode=params.target_mode)
    held_az, held_el = held_out_angles(params.held_out_views)
    held = render_api.orbit_records(held_az, held_el, image_size=params.image_size, centre=centre, radius=radius,
                                    fov_deg=params.fov_deg) if params.held_out_views else []
    if params.target_mode == "silhouettes":
        az, el = orbit_angles(params.views)
        records = render_api.orbit_records(az, el, image_size=params.image_size, centre=centre, radius=radius,
                                           fov_deg=params.fov_deg)
        masks = render_api.render_masks(mesh, records + held)
        target.records, target.masks = records, masks[:len(records)]
        if held:
            target.held_records, target.held_masks = held, masks[len(records):]
    elif held:
        target.held_records, target.held_masks = held, render_api.render_masks(mesh, held)
    return target


def _frame_from_records(records: list[dict]) -> tuple[np.ndarray, float]:
    """Centre and bounding radius (object coordinates) from a record's ``object`` block, or from its camera."""
    obj = records[0].get("object", {})
    if "centre" in obj and "radius" in obj:
        return np.asarray(obj["centre"], dtype=float), float(obj["radius"])
    pose = np.asarray(obj.get("pose", np.eye(4)), dtype=float)
    inv = np.linalg.inv(pose)
    centre = (inv @ np.array([0.0, 0.0, 0.0, 1.0]))[:3]
    cam = np.asarray(records[0]["camera"]["pose"], dtype=float)
    k = records[0]["camera"]["intrinsics"]
    eye = (inv @ cam[:, 3])[:3]  # camera centre in object coordinates
    half = math.atan(0.5 * int(records[0]["image_size"]) / float(k["fy"]))
    return centre, float(np.linalg.norm(eye - centre) * math.sin(half))


def target_from_masks(masks: np.ndarray, records: list[dict], params: FitParams,
                      mesh: trimesh.Trimesh | None = None) -> FitTarget:
    """Silhouettes (n, H, W) and their render records; every k-th view is held out when ``params.held_out_views``."""
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.shape[1] != masks.shape[2]:
        raise FitError(f"masks: expected (n, H, H) square silhouettes, got shape {masks.shape}")
    if len(records) != len(masks):
        raise FitError(f"records: {len(records)} records for {len(masks)} masks; need one record per mask")
    sizes = {int(r.get("image_size", -1)) for r in records}
    if sizes != {masks.shape[1]}:
        raise FitError(f"records: image_size {sorted(sizes)} does not match the masks' side {masks.shape[1]}")
    cams = render_api.cameras_from_records(records)  # validates every record (names the bad one)
    del cams
    masks = (masks > 0.5) if masks.dtype != bool else masks
    if not masks.any(axis=(1, 2)).all():
        empty = [i for i in range(len(masks)) if not masks[i].any()]
        raise FitError(f"masks: views {empty} are empty (no object pixel)")
    centre, radius = _frame_from_records(records)
    if mesh is not None:
        mesh = _check_mesh(mesh)
    fit_idx = list(range(len(masks)))
    held_idx: list[int] = []
    if params.held_out_views and len(masks) > params.held_out_views:
        step = max(2, len(masks) // params.held_out_views)
        held_idx = list(range(step - 1, len(masks), step))[:params.held_out_views]
        fit_idx = [i for i in fit_idx if i not in held_idx]
    return FitTarget(centre=centre, radius=radius, masks=masks[fit_idx], records=[records[i] for i in fit_idx],
                     held_masks=masks[held_idx] if held_idx else None,
                     held_records=[records[i] for i in held_idx] if held_idx else None, mesh=mesh)


def _sphere(level: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    sphere = trimesh.creation.icosphere(subdivisions=level, radius=radius)
    return np.asarray(sphere.vertices, dtype=np.float64), np.asarray(sphere.faces, dtype=np.int64)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def mesh_metrics(fitted: trimesh.Trimesh, truth: trimesh.Trimesh, centre: np.ndarray, radius: float, *,
                 points: int = 10_000, threshold: float = 0.05, seed: int = 0) -> dict:
    """Chamfer distance (mean squared NN distance both ways) and F-score at ``threshold``, both in units of the
    true mesh's bounding radius (points sampled on both surfaces)."""
    g = torch.Generator().manual_seed(seed)

    def pts(mesh):
        v = torch.as_tensor((np.asarray(mesh.vertices) - centre) / radius, dtype=torch.float64)
        return L.sample_points(v, torch.as_tensor(np.asarray(mesh.faces), dtype=torch.long), points, g)

    a, b = pts(fitted), pts(truth)
    da, _ = L.nearest(a, b)
    db, _ = L.nearest(b, a)
    precision = float((da.sqrt() < threshold).double().mean())
    recall = float((db.sqrt() < threshold).double().mean())
    fscore = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {"chamfer": float(da.mean() + db.mean()), "fscore": fscore, "precision": precision, "recall": recall,
            "fscore_threshold": threshold}


def schedule(params: FitParams, step: int) -> tuple[float, float]:
    """Sigma and learning rate of ``step`` (1-based): sigma annealed geometrically from ``sigma_start`` to ``sigma``
    (coarse to fine), the learning rate constant or cosine-decayed to 0 at the last step."""
    progress = (step - 1) / max(params.iterations - 1, 1)  # 0 at the first step, 1 at the last
    sigma = (params.sigma if params.sigma_start is None
             else params.sigma_start * (params.sigma / params.sigma_start) ** progress)
    lr = params.learning_rate()
    if params.lr_schedule == "cosine":
        lr *= 0.5 * (1.0 + math.cos(math.pi * progress))
    return sigma, lr


def iter_fit(target: FitTarget, params: FitParams) -> Iterator[FitStep | FitResult]:
    """Run the fit, yielding a :class:`FitStep` every ``params.log_every`` steps and the :class:`FitResult` last."""
    mode = target.mode
    w = params.weights
    if mode == "silhouettes" and (target.masks is None or target.records is None):
        raise FitError("target: silhouette fitting needs masks and records")
    if mode == "mesh" and target.mesh is None:
        raise FitError("target: target_mode 'mesh' needs a target mesh")
    torch.manual_seed(params.seed)
    g = torch.Generator().manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)
    dtype = torch.float32
    base_np, faces_np = _sphere(params.level, params.init_radius)
    base = torch.as_tensor(base_np, dtype=dtype)
    faces = torch.as_tensor(faces_np)
    centre = torch.as_tensor(target.centre, dtype=dtype)
    scale = float(target.radius)
    offsets = torch.zeros_like(base, requires_grad=True)
    lr = params.learning_rate()
    optimiser = (torch.optim.SGD([offsets], lr=lr, momentum=params.momentum) if params.optimizer == "sgd"
                 else torch.optim.Adam([offsets], lr=lr))

    cams = silhouettes = None
    if mode == "silhouettes":
        cams = render_api.cameras_from_records(target.records)
        silhouettes = torch.as_tensor(np.asarray(target.masks, dtype=np.float32))
    truth_points = truth_vertices = truth_quadrics = None
    if mode == "mesh":
        tv = torch.as_tensor((np.asarray(target.mesh.vertices) - target.centre) / scale, dtype=dtype)
        tf = torch.as_tensor(np.asarray(target.mesh.faces), dtype=torch.long)
        truth_points = L.sample_points(tv, tf, params.points, g)
        truth_vertices, truth_quadrics = tv, L.vertex_quadrics(tv, tf)

    history: list[dict] = []
    raster_s = loss_s = 0.0
    started = time.perf_counter()
    n_views = 0 if cams is None else len(cams)
    per_step = n_views if params.views_per_iteration in (0,) else min(params.views_per_iteration, n_views)
    for step in range(1, params.iterations + 1):
        sigma, step_lr = schedule(params, step)
        for group in optimiser.param_groups:
            group["lr"] = step_lr
        optimiser.zero_grad(set_to_none=True)
        verts = base + offsets
        terms: dict[str, torch.Tensor] = {}
        rendered = None
        t0 = time.perf_counter()
        if mode == "silhouettes" and w.silhouette > 0:
            index = np.arange(n_views) if per_step == n_views else np.sort(rng.choice(n_views, per_step, replace=False))
            rendered = render_api.soft_silhouette(centre + scale * verts, faces, cams.subset(index), sigma=sigma)
        t1 = time.perf_counter()
        if rendered is not None:
            leaf = rendered.detach().requires_grad_(True)  # split the backward pass: losses here, rasteriser below
            terms["silhouette"] = L.silhouette_loss(leaf, silhouettes[index])
        if mode == "mesh":
            if w.chamfer > 0:
                terms["chamfer"] = L.chamfer_distance(L.sample_points(verts, faces, params.points, g), truth_points)
            if w.quadric > 0:
                terms["quadric"] = L.quadric_loss(verts, truth_vertices, truth_quadrics)
        if w.edge > 0:
            terms["edge"] = L.edge_loss(verts, faces)
        if w.normal > 0:
            terms["normal"] = L.normal_consistency(verts, faces)
        if w.laplacian > 0:
            terms["laplacian"] = L.laplacian_loss(verts, faces)
        if not terms:
            raise FitError("weights: every loss that applies to this target has weight 0")
        total = sum(getattr(w, name) * value for name, value in terms.items())
        total.backward()
        t2 = time.perf_counter()
        if rendered is not None and leaf.grad is not None:
            rendered.backward(leaf.grad)
        t3 = time.perf_counter()
        optimiser.step()
        raster_s += (t1 - t0) + (t3 - t2)
        loss_s += t2 - t1
        if not math.isfinite(float(total.detach())):
            raise FitError(f"the fit diverged at step {step} (loss {float(total)}); lower lr (now {lr})")
        if step % params.log_every == 0 or step == params.iterations or step == 1:
            row = {"iteration": step, "loss": float(total.detach()), **{k: float(v.detach()) for k, v in terms.items()},
                   "seconds": time.perf_counter() - started}
            history.append(row)
            yield FitStep(step, params.iterations, row["loss"], {k: float(v.detach()) for k, v in terms.items()},
                          row["seconds"])
    fit_seconds = time.perf_counter() - started

    final = (base + offsets).detach().double().numpy() * scale + target.centre
    fitted = trimesh.Trimesh(vertices=final, faces=faces_np, process=False)
    metrics: dict = {"vertices": len(final), "faces": len(faces_np), "iterations": params.iterations,
                     "final_loss": history[-1]["loss"], "fit_seconds": fit_seconds}
    if target.held_records:
        pred = render_api.hard_silhouette(final, faces_np, render_api.cameras_from_records(target.held_records))
        metrics["held_out_iou"] = float(np.mean([iou(p, t) for p, t in zip(pred, target.held_masks)]))
        metrics["held_out_views"] = len(target.held_records)
    if target.records:
        pred = render_api.hard_silhouette(final, faces_np, render_api.cameras_from_records(target.records))
        metrics["train_iou"] = float(np.mean([iou(p, t) for p, t in zip(pred, target.masks)]))
    if target.mesh is not None:
        metrics.update(mesh_metrics(fitted, target.mesh, target.centre, target.radius, points=max(params.points, 10_000),
                                    threshold=params.fscore_threshold, seed=params.seed))
    timing = {"fit_seconds": fit_seconds, "raster_seconds": raster_s, "loss_seconds": loss_s}
    yield FitResult(mesh=fitted, metrics=metrics, history=history, timing=timing)


MESH_FORMATS = ("glb", "gltf", "obj", "ply", "stl", "off")


def parse_params(params: FitParams | dict | str | None) -> FitParams:
    """FitParams from a model, a dict or JSON text ("" for the defaults); errors name the field (``params.<field>``)."""
    from pydantic import ValidationError

    from services.common.errors import SpecError
    from services.common.spec.experiment import format_validation_error
    from services.common.spec.loading import parse_json_field

    if isinstance(params, FitParams):
        return params
    if isinstance(params, str):
        params = parse_json_field(params, "params_json", default={})
    if not isinstance(params or {}, dict):
        raise SpecError("params: must be a JSON object of FitParams fields")
    try:
        return FitParams.model_validate(params or {})
    except ValidationError as exc:
        raise SpecError("params." + format_validation_error(exc).replace("\n", "; params.")) from None


def load_mesh(data: bytes, fmt: str = "glb", name: str = "mesh") -> trimesh.Trimesh:
    """A triangle mesh from file bytes (``fmt`` one of :data:`MESH_FORMATS`); errors name ``name``."""
    fmt = (fmt or "glb").lower().lstrip(".")
    if fmt not in MESH_FORMATS:
        raise FitError(f"{name}_format: must be one of {', '.join(MESH_FORMATS)}, got {fmt!r}")
    try:
        mesh = trimesh.load(io.BytesIO(data), file_type=fmt, force="mesh", process=False)
    except Exception as exc:  # noqa: BLE001 - the many parser errors of trimesh become one named error
        raise FitError(f"{name}: could not read {len(data)} bytes as {fmt}: {type(exc).__name__}: {exc}") from None
    return _check_mesh(mesh, name)


def decode_masks(pngs: list[bytes]) -> np.ndarray:
    """(n, H, W) bool masks from PNG bytes (non-zero = object; the first channel of colour images)."""
    from PIL import Image

    masks = []
    for i, data in enumerate(pngs):
        try:
            with Image.open(io.BytesIO(data)) as image:
                array = np.asarray(image)
        except Exception as exc:  # noqa: BLE001
            raise FitError(f"masks_png[{i}]: not a readable image: {type(exc).__name__}: {exc}") from None
        if array.ndim == 3:
            array = array[..., 0]
        masks.append(array > 0)
    if len({m.shape for m in masks}) > 1:
        raise FitError(f"masks_png: every mask needs the same size, got {sorted({m.shape for m in masks})}")
    return np.stack(masks)


def prepare(params: FitParams | dict | str | None, *, mesh: bytes = b"", mesh_format: str = "glb",
            masks_png: list[bytes] | None = None, records: list[dict] | str | None = None) -> tuple[FitParams, FitTarget, str]:
    """Parameters, target and fit id from raw inputs (what the RPC and the CLI receive): a mesh or masks + records."""
    params = parse_params(params)
    masks_png = list(masks_png or [])
    if bool(mesh) == bool(masks_png):
        raise FitError("target: give either a mesh or masks with their records, not both and not neither")
    if mesh:
        return params, target_from_mesh(load_mesh(mesh, mesh_format), params), fit_id_for(params, mesh)
    if isinstance(records, str):
        from services.common.spec.loading import parse_json_field

        records = parse_json_field(records, "records_json", default=[])
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise FitError("records_json: must be a JSON list of render records (objects), one per mask")
    masks = decode_masks(masks_png)
    return (params, target_from_masks(masks, records, params),
            fit_id_for(params, json.dumps(records, sort_keys=True).encode(), *masks_png))


def read_mask_folder(folder) -> tuple[list[bytes], list[dict]]:
    """Masks and their render records from a folder, as a lab or an unpacked render shard gives them.

    Either ``records.json`` (a list of records, one per PNG in sorted name order), or beside every mask
    ``<name>.png`` / ``<name>.mask.png`` its record ``<name>.json`` (a render shard's ``mask.png`` and ``json``
    members). PNGs named ``*.rgb.png``, ``*.seg.png`` or ``*.depth.png`` are not masks and are skipped.
    """
    from pathlib import Path

    folder = Path(folder)
    if not folder.is_dir():
        raise FitError(f"masks folder: {folder} is not a directory")
    skip = (".rgb.png", ".seg.png", ".depth.png")
    pngs = sorted(p for p in folder.glob("*.png") if not p.name.endswith(skip))
    if not pngs:
        raise FitError(f"masks folder: no mask PNGs in {folder}")
    listed = folder / "records.json"
    if listed.exists():
        try:
            records = json.loads(listed.read_text())
        except ValueError as exc:
            raise FitError(f"{listed}: not JSON: {exc}") from None
        if not isinstance(records, list) or len(records) != len(pngs):
            raise FitError(f"{listed}: need a list of {len(pngs)} records (one per mask PNG, sorted by name), got "
                           f"{len(records) if isinstance(records, list) else type(records).__name__}")
    else:
        records = []
        for png in pngs:
            stem = png.name[:-len(".mask.png")] if png.name.endswith(".mask.png") else png.stem
            path = folder / f"{stem}.json"
            if not path.exists():
                raise FitError(f"masks folder: {png.name} has no record {path.name} (or give records.json)")
            try:
                records.append(json.loads(path.read_text()))
            except ValueError as exc:
                raise FitError(f"{path}: not JSON: {exc}") from None
    return [p.read_bytes() for p in pngs], records


def fit(target: FitTarget, params: FitParams) -> FitResult:
    """Run :func:`iter_fit` to the end and return its result."""
    result = None
    for event in iter_fit(target, params):
        if isinstance(event, FitResult):
            result = event
    assert result is not None
    return result


def fit_id_for(params: FitParams, *parts: bytes) -> str:
    """A stable name for a fit of these inputs under these parameters: ``fit-<10 hex>``."""
    digest = hashlib.sha256(params.model_dump_json().encode())
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return "fit-" + digest.hexdigest()[:10]


def loss_curve_png(history: list[dict]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [row["iteration"] for row in history]
    for name in ("loss", *LOSS_NAMES):
        values = [row.get(name) for row in history]
        if all(v is not None and v > 0 for v in values):
            ax.plot(steps, values, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (unweighted terms; total weighted)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=80)
    plt.close(fig)
    return out.getvalue()


def write_fit(store: Store, fit_id: str, result: FitResult, params: FitParams) -> list[ManifestEntry]:
    """Store a fit's outputs under ``fits/<fit_id>/``; metrics.json last (its presence means complete)."""
    entries = [
        put_with_entry(store, fit_key(fit_id, "mesh.glb"), result.mesh.export(file_type="glb")),
        put_with_entry(store, fit_key(fit_id, "losses.jsonl"),
                       "".join(json.dumps(row, sort_keys=True) + "\n" for row in result.history).encode()),
        put_with_entry(store, fit_key(fit_id, "losses.png"), loss_curve_png(result.history)),
    ]
    metrics = {**result.metrics, "timing": result.timing, "params": params.model_dump(mode="json")}
    entries.append(put_with_entry(store, fit_key(fit_id, "metrics.json"),
                                  json.dumps(metrics, indent=2, sort_keys=True).encode()))
    return entries


__all__ = ["MESH_FORMATS", "read_mask_folder", "decode_masks", "load_mesh", "parse_params", "prepare", "FitError", "FitResult", "FitStep", "FitTarget", "fit", "fit_id_for", "fit_key", "held_out_angles",
           "iter_fit", "mesh_metrics", "schedule", "orbit_angles", "target_from_masks", "target_from_mesh", "write_fit"]
