"""Writing a mesh dataset into the store, one class at a time, resumably.

Layout (DESIGN.md)::

    meshes/<dataset_id>/<class:05d>/<instance>.glb     (procsynth, morphsynth)
    meshes/<dataset_id>/<class:05d>/ifs.json           (fractal2d)
    meshes/<dataset_id>/<class:05d>/class.json         the class's manifest entries (written after its items)
    meshes/<dataset_id>/manifest.json                  rewritten after each completed class

A class counts as done only once its entries are in ``manifest.json``. The
per-class ``class.json`` lets a class whose items were all written, but whose
manifest update was lost (a crash, or two Indexed-Job workers rewriting the
manifest at the same moment), be merged on the next run without regenerating it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from services.common.errors import IntegrityError, ObjectNotFoundError
from services.common.manifest import (Manifest, ManifestEntry, put_with_entry, read_rebuildable_manifest, verify_entry,
                                      write_manifest)
from services.common.spec.experiment import DatasetSpec, ExperimentSpec
from services.common.store import Store
from services.meshgen.registry import ProgressCallback, ShapeFamily, class_dir, get_family

MESHGEN_FAMILIES = ("procsynth", "morphsynth", "fractal2d", "fitted")

log = logging.getLogger(__name__)


def dataset_prefix(dataset_id: str) -> str:
    return f"meshes/{dataset_id}"


def manifest_key(dataset_id: str) -> str:
    return f"meshes/{dataset_id}/manifest.json"


def class_record_key(dataset_id: str, class_index: int) -> str:
    return f"meshes/{dataset_id}/{class_dir(class_index)}/class.json"


def is_meshgen_dataset(dataset: DatasetSpec) -> bool:
    """Whether meshgen makes this dataset's classes (noisescenes are made by the render stage alone)."""
    return dataset.kind in MESHGEN_FAMILIES


def family_of(dataset: DatasetSpec) -> ShapeFamily:
    if not is_meshgen_dataset(dataset):
        raise ValueError(
            f"datasets[{dataset.name}].family: {dataset.kind!r} is not made by meshgen (meshgen families: {', '.join(MESHGEN_FAMILIES)})"
        )
    return get_family(dataset.kind)


def instances_of(dataset: DatasetSpec) -> int:
    family = family_of(dataset)
    return dataset.instances_per_class or family.default_instances(dataset.family)


def new_manifest(spec: ExperimentSpec, dataset: DatasetSpec) -> Manifest:
    """The empty manifest of a dataset, with the metadata other stages read."""
    dataset_id = spec.dataset_id(dataset.name)
    return Manifest(
        kind="meshes",
        spec_hash=dataset_id.rsplit("-", 1)[1],
        metadata={
            "family": dataset.kind,
            "params": dataset.family.model_dump(mode="json"),
            "classes": dataset.classes,
            "instances_per_class": instances_of(dataset),
            "dataset": dataset.name,
            "dataset_id": dataset_id,
            "seed": spec.dataset_seed(dataset),
        },
    )


def write_class(store: Store, spec: ExperimentSpec, dataset_name: str, class_index: int) -> list[ManifestEntry]:
    """Generate and store every item of one class, then its ``class.json``; return its manifest entries.

    Does not touch ``manifest.json`` (see :func:`iter_generate_dataset`).
    """
    dataset = spec.dataset(dataset_name)
    if not 0 <= class_index < dataset.classes:
        raise ValueError(f"class_index: {class_index} is outside 0..{dataset.classes - 1} of dataset {dataset_name!r}")
    family = family_of(dataset)
    dataset_id = spec.dataset_id(dataset_name)
    instances = family.stored_instances(dataset.family, instances_of(dataset))
    items = family.generate_class(dataset.family, spec.dataset_seed(dataset), class_index, instances)
    entries = [
        put_with_entry(
            store, f"{dataset_prefix(dataset_id)}/{item.relative_key}", item.data,
            class_index=item.class_index, instance=item.instance, seed=item.seed, stats=item.stats,
        )
        for item in items
    ]
    store.put_json(class_record_key(dataset_id, class_index), [e.model_dump(mode="json") for e in entries])
    return entries


def _recorded_class(store: Store, dataset_id: str, class_index: int, expected: int) -> list[ManifestEntry] | None:
    """Entries of a class whose items are already stored and intact, or ``None``."""
    try:
        entries = [ManifestEntry.model_validate(e) for e in store.get_json(class_record_key(dataset_id, class_index))]
        if len(entries) != expected:
            return None
        for entry in entries:
            verify_entry(store, entry)
    except (ObjectNotFoundError, IntegrityError, ValueError):
        return None
    return entries


def _intact(store: Store, entries: list[ManifestEntry]) -> bool:
    """Whether every listed item is stored with its listed size and SHA-256 (streamed); logs what is not."""
    for entry in entries:
        try:
            verify_entry(store, entry)
        except IntegrityError as exc:
            log.warning("%s; making its class again", exc)
            return False
    return True


@dataclass
class DatasetProgress:
    """One step of :func:`iter_generate_dataset` (a class finished or skipped, or the end)."""

    dataset: str
    dataset_id: str
    done: int
    total: int
    skipped: int
    class_index: int | None = None
    entries: list[ManifestEntry] = field(default_factory=list)
    generated: bool = False
    finished: bool = False

    @property
    def task(self) -> str:
        return f"meshgen:{self.dataset}"


def iter_generate_dataset(
    spec: ExperimentSpec, dataset_name: str, store: Store, *, classes: Iterable[int] | None = None
) -> Iterator[DatasetProgress]:
    """Write the classes ``classes`` (default: all) of a dataset, yielding after each.

    Classes already in the manifest are skipped; classes stored but missing from
    the manifest are merged without regenerating. The manifest is re-read and
    rewritten after each class, so a concurrent worker's classes are kept.
    """
    dataset = spec.dataset(dataset_name)
    family = family_of(dataset)
    dataset_id = spec.dataset_id(dataset_name)
    key = manifest_key(dataset_id)
    expected = len(family.stored_instances(dataset.family, instances_of(dataset)))
    todo = list(range(dataset.classes)) if classes is None else sorted(set(classes))
    for c in todo:
        if not 0 <= c < dataset.classes:
            raise ValueError(f"classes: {c} is outside 0..{dataset.classes - 1} of dataset {dataset_name!r}")
    # a damaged manifest is rebuilt from the classes' class.json records (each verified below)
    manifest = read_rebuildable_manifest(store, key) or new_manifest(spec, dataset)
    done = skipped = 0
    for class_index in todo:
        listed = [e for e in manifest.entries if getattr(e, "class_index", None) == class_index]
        if len(listed) == expected and _intact(store, listed):
            done += 1
            skipped += 1
            yield DatasetProgress(dataset_name, dataset_id, done, len(todo), skipped, class_index, listed)
            continue
        entries = _recorded_class(store, dataset_id, class_index, expected)
        generated = entries is None
        if generated:  # never made, or made and damaged since: make it again (deterministic: same bytes)
            entries = write_class(store, spec, dataset_name, class_index)
        else:
            skipped += 1
        manifest = read_rebuildable_manifest(store, key) or manifest
        for entry in entries:
            manifest.upsert(entry)
        write_manifest(store, key, manifest)
        done += 1
        yield DatasetProgress(dataset_name, dataset_id, done, len(todo), skipped, class_index, entries, generated)
    yield DatasetProgress(dataset_name, dataset_id, done, len(todo), skipped, finished=True)


def generate_dataset(
    spec: ExperimentSpec, dataset_name: str, store: Store, *,
    classes: Iterable[int] | None = None, progress: ProgressCallback | None = None,
) -> dict:
    """Write (or finish) a dataset's classes; return ``{"dataset_id", "classes", "generated", "skipped"}``."""
    last = None
    for last in iter_generate_dataset(spec, dataset_name, store, classes=classes):
        if progress is not None and not last.finished:
            progress(last.task, last.done, last.total)
    return {"dataset_id": last.dataset_id, "classes": last.done, "generated": last.done - last.skipped, "skipped": last.skipped}


def missing_classes(spec: ExperimentSpec, dataset_name: str, store: Store) -> list[int]:
    """Classes of a dataset not complete in its manifest, after merging finished-but-unlisted ones.

    Parallel workers rewrite ``manifest.json`` read-then-write, so a concurrent update can
    drop another worker's classes; their ``class.json`` records survive. This merges them
    (verifying every item), writes the healed manifest, and returns what is truly missing.
    """
    dataset = spec.dataset(dataset_name)
    family = family_of(dataset)
    dataset_id = spec.dataset_id(dataset_name)
    key = manifest_key(dataset_id)
    expected = len(family.stored_instances(dataset.family, instances_of(dataset)))
    manifest = read_rebuildable_manifest(store, key) or new_manifest(spec, dataset)
    listed: dict[int, int] = {}
    for entry in manifest.entries:
        c = getattr(entry, "class_index", None)
        listed[c] = listed.get(c, 0) + 1
    missing, healed = [], False
    for class_index in range(dataset.classes):
        if listed.get(class_index, 0) == expected:
            continue
        entries = _recorded_class(store, dataset_id, class_index, expected)
        if entries is None:
            missing.append(class_index)
            continue
        for entry in entries:
            manifest.upsert(entry)
        healed = True
    if healed:
        write_manifest(store, key, manifest)
    return missing
