"""Batch entry point: this worker's share of every meshgen dataset of an experiment.

Class ``c`` belongs to worker ``c % count`` (Kubernetes Indexed Jobs pass
``index`` = ``JOB_COMPLETION_INDEX`` and ``count`` = ``JOB_COMPLETION_COUNT``).
Classes already complete in the store are skipped once every item verifies (size and SHA-256,
streamed); a damaged class is made again, byte-identical.
"""

from __future__ import annotations

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
