"""Batch entry point: this worker's share of every meshgen dataset of an experiment.

Class ``c`` belongs to worker ``c % count`` (Kubernetes Indexed Jobs pass
``index`` = ``JOB_COMPLETION_INDEX`` and ``count`` = ``JOB_COMPLETION_COUNT``).
Classes already complete in the store are skipped once every item verifies (size and SHA-256,
streamed); a damaged class is made again, byte-identical.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from services.common.spec.experiment import ExperimentSpec
from services.common.store import Store
from services.meshgen.dataset import generate_dataset, is_meshgen_dataset


def shard_classes(classes: int, index: int, count: int) -> list[int]:
    """The classes of ``range(classes)`` that worker ``index`` of ``count`` owns."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"index/count: need 0 <= index < count, got index={index}, count={count}")
    return list(range(index, classes, count))


def run_job(
    spec: ExperimentSpec, store: Store, *, index: int = 0, count: int = 1,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Generate this worker's classes of every meshgen dataset in ``spec``.

    Returns
    -------
    dict
        ``{"stage": "meshgen", "index", "count", "datasets": {name: {"dataset_id", "classes", "generated", "skipped"}}}``
    """
    summary = {"stage": "meshgen", "index": index, "count": count, "datasets": {}}
    for dataset in spec.datasets:
        if not is_meshgen_dataset(dataset) or dataset.meshes_from is not None:
            continue  # noise scenes need no meshes; `meshes_from` datasets render another's
        classes = shard_classes(dataset.classes, index, count)
        summary["datasets"][dataset.name] = generate_dataset(spec, dataset.name, store, classes=classes, progress=progress)
    return summary


def generate_classes_share(store: Store, spec: ExperimentSpec, dataset_name: str, classes: list[int], *,
                           index: int, count: int, progress=None, emit=None) -> dict:
    """Worker target of ``flatland serve``'s ``GenerateDataset`` (:class:`services.common.workers.WorkerPool`):
    classes ``classes[index::count]`` of one dataset, one ``emit`` per class finished or found done."""
    from services.meshgen.dataset import iter_generate_dataset

    generated = skipped = 0
    for step in iter_generate_dataset(spec, dataset_name, store, classes=classes[index::count]):
        if step.finished:
            break
        generated += step.generated
        skipped += not step.generated
        if emit is not None:
            emit({"class_index": step.class_index, "generated": step.generated,
                  "entries": [(e.key, e.size, e.sha256) for e in step.entries]})
    return {"generated": generated, "skipped": skipped}


def run_fit(params, store: Store, *, mesh: bytes = b"", mesh_format: str = "glb", masks_png: list[bytes] | None = None,
            records: list[dict] | None = None, masks_folder: str | None = None,
            progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Fit an ico-sphere to one target (a mesh, masks + records, or a folder of them) and store the outputs.

    Returns ``{"fit_id", "metrics", "timing", "outputs": [store keys]}``; ``progress(message, done, total)``
    is called every ``params.log_every`` steps.
    """
    from services.meshgen import fit as fitting  # torch: imported only for a fit

    if masks_folder is not None:
        masks_png, records = fitting.read_mask_folder(masks_folder)
    params, target, fit_id = fitting.prepare(params, mesh=mesh, mesh_format=mesh_format, masks_png=masks_png,
                                             records=records)
    for event in fitting.iter_fit(target, params):
        if isinstance(event, fitting.FitStep):
            if progress is not None:
                progress(f"{fit_id} loss {event.loss:.4g}", event.iteration, event.total)
            continue
        entries = fitting.write_fit(store, fit_id, event, params)
        return {"fit_id": fit_id, "metrics": event.metrics, "timing": event.timing, "outputs": [e.key for e in entries]}
    raise RuntimeError("the fit ended without a result")


def fit_folder(folder: str, params) -> tuple:
    """``family: fitted``'s class mesh: an ico-sphere fitted to a folder of masks + render records (not stored as a
    fit; the family stores the mesh). Returns ``(mesh, stats)`` with the fit's id and its silhouette IoUs."""
    from services.meshgen import fit as fitting

    masks_png, records = fitting.read_mask_folder(folder)
    params, target, fit_id = fitting.prepare(params, masks_png=masks_png, records=records)
    result = fitting.fit(target, params)
    stats = {"vertices": int(len(result.mesh.vertices)), "faces": int(len(result.mesh.faces)),
             "extents": [round(float(x), 6) for x in result.mesh.extents], "fit_id": fit_id, "views": len(records),
             **{k: result.metrics[k] for k in ("held_out_iou", "train_iou", "final_loss", "fit_seconds")
                if k in result.metrics}}
    return result.mesh, stats


def fit_dataset(spec: ExperimentSpec, store: Store, dataset_name: str, params=None, *, classes: int = 3,
                instance: int = 0, progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Shape recoverability of a rendered dataset: fit the first ``classes`` classes from their rendered masks.

    For each class, every view of ``instance`` in the dataset's shards (``mask`` and ``json`` members, read
    through ``services.render.api``) is a target; the fit is compared with the true mesh the records name
    (``mesh_key``). Writes ``fits/<dataset_id>/<class:05d>/`` per class and ``fits/<dataset_id>/recoverability.json``
    (per class and mean: held-out IoU, chamfer, F-score). Needs ``mask`` among the dataset's outputs and plain
    camera views (not FlatWorld's 2D-warped ones).
    """
    import io
    import tarfile

    import numpy as np

    from services.common.manifest import read_manifest
    from services.meshgen import fit as fitting
    from services.meshgen.api import recoverability_key
    from services.render import api as render_api

    params = fitting.parse_params(params)
    dataset_id = spec.dataset_id(dataset_name)
    manifest = read_manifest(store, render_api.dataset_manifest_key(dataset_id))
    if manifest is None:
        raise fitting.FitError(f"dataset {dataset_name!r}: no render manifest at "
                               f"{render_api.dataset_manifest_key(dataset_id)}; render it first")
    views: dict[int, dict[str, dict]] = {}
    for entry in manifest.entries:
        if not entry.key.endswith(".tar"):
            continue
        with tarfile.open(fileobj=io.BytesIO(store.get_bytes(entry.key))) as tar:
            for member in tar.getmembers():
                base, _, suffix = member.name.partition(".")
                parts = base.split("_")
                if suffix not in ("json", "mask.png") or len(parts) != 3:
                    continue
                cls, inst = int(parts[0]), int(parts[1])
                if cls < classes and inst == instance:
                    views.setdefault(cls, {}).setdefault(base, {})[suffix] = tar.extractfile(member).read()
    if not views:
        raise fitting.FitError(f"dataset {dataset_name!r}: no samples of instance {instance} in classes < {classes}")
    summary: dict = {"dataset": dataset_name, "dataset_id": dataset_id, "instance": instance, "classes": {},
                     "params": params.model_dump(mode="json")}
    for done, cls in enumerate(sorted(views), start=1):
        samples = [views[cls][k] for k in sorted(views[cls])]
        if any("mask.png" not in s for s in samples):
            raise fitting.FitError(f"dataset {dataset_name!r}: samples have no mask.png; add 'mask' to render.outputs")
        records = [json.loads(s["json"]) for s in samples]
        masks = fitting.decode_masks([s["mask.png"] for s in samples])
        truth = fitting.load_mesh(store.get_bytes(records[0]["mesh_key"]), "glb", name="mesh_key")
        target = fitting.target_from_masks(masks, records, params, mesh=truth)
        result = fitting.fit(target, params)
        fitting.write_fit(store, f"{dataset_id}/{cls:05d}", result, params)
        summary["classes"][str(cls)] = {k: result.metrics.get(k) for k in
                                        ("held_out_iou", "train_iou", "chamfer", "fscore", "fit_seconds")}
        if progress is not None:
            progress(f"fit class {cls}", done, len(views))
    for key in ("held_out_iou", "chamfer", "fscore"):
        values = [c[key] for c in summary["classes"].values() if c.get(key) is not None]
        summary[f"mean_{key}"] = float(np.mean(values)) if values else None
    summary["classes_requested"] = classes
    store.put_bytes(recoverability_key(dataset_id), json.dumps(summary, indent=2, sort_keys=True).encode())
    return summary
