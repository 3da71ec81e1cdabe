"""Where rendered samples go: deterministic WebDataset tars, their part records and the dataset manifest.

A sample is a group of tar members sharing the basename ``<class:05d>_<instance>_<view:05d>``
(``rgb.png`` — or ``rgb.webp``/``rgb.jpg`` — ``depth.png``, ``seg.png``, ``mask.png``,
``json``, ``cls``: the dataset's declared ``outputs`` plus the record; fractal and
noise-scene samples have no depth/mask; see :mod:`services.render.codec`). Tars are byte-identical for the same
spec: members in sample order, ``mtime=0``, ``uid=gid=0``, empty owner names,
mode 0644, USTAR format.

A shard counts only once its entry is in ``datasets/<id>/manifest.json``. Workers
of an Indexed Job write the manifest concurrently, so each finished shard first
writes its entry to ``datasets/<id>/parts/<split>-<shard>.json`` and every manifest
write merges all parts: an entry lost to a concurrent read-modify-write comes back
at the next write (and :func:`consolidate_manifest` at the end of every job).

What goes into a shard comes from the family's sample writer (:mod:`services.render.kinds`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
import tempfile
from collections.abc import Callable

from pydantic import ValidationError

from services.common.errors import ObjectNotFoundError
from services.common.manifest import Manifest, ManifestEntry, read_rebuildable_manifest, write_manifest
from services.common.spec.experiment import ExperimentSpec
from services.common.spec.meshgen import MESH_KINDS
from services.common.store import Store, sha256_stream
from services.render.codec import INDEXED_MEMBERS, find_rgb
from services.render.keys import dataset_manifest_key, part_key, shard_index_key
from services.render.kinds import SAMPLE_WRITERS, DatasetContext, dataset_context
from services.render.plan import ShardTask, shard_plan, split_counts

log = logging.getLogger(__name__)


class DeterministicTarWriter:
    """Write samples into a tar file with fixed metadata (same samples -> same bytes)."""

    def __init__(self, fileobj):
        self._tar = tarfile.open(fileobj=fileobj, mode="w", format=tarfile.USTAR_FORMAT)
        self.samples = 0
        self.index: list[list] = []  # per sample: [key, class, rgb offset, rgb size, rgb sha256(, seg ...)] (see shard_index)
        # per indexed member: one [offset, size, sha256] (or None) per index row
        self.members: dict[str, list] = {name: [] for name in INDEXED_MEMBERS}

    def write(self, key: str, files: dict[str, bytes]) -> None:
        rgb_name = find_rgb(files)
        data_at: dict[str, int] = {}  # member -> where its bytes start in the tar
        for extension in files:
            data = files[extension]
            info = tarfile.TarInfo(f"{key}.{extension}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
            if extension in (rgb_name, "seg.png", *INDEXED_MEMBERS):  # the data follows its header block(s)
                data_at[extension] = self._tar.offset - -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        if rgb_name in data_at and "cls" in files:
            rgb = files[rgb_name]
            row = [key, int(files["cls"]), data_at[rgb_name], len(rgb), hashlib.sha256(rgb).hexdigest()]
            if "seg.png" in data_at:
                seg = files["seg.png"]
                row += [data_at["seg.png"], len(seg), hashlib.sha256(seg).hexdigest()]
            self.index.append(row)
            for name, column in self.members.items():
                data = files.get(name)
                column.append(None if data is None else [data_at[name], len(data), hashlib.sha256(data).hexdigest()])
        self.samples += 1

    def shard_index(self, shard_key: str, shard_sha256: str) -> dict:
        """Where each sample's image lies in the tar, so training can read samples in any order.

        ``{"format": 1, "shard": key, "sha256": the tar's digest, "samples": [[sample key,
        class, rgb offset, rgb size, rgb sha256], ...]}`` in tar order; the rgb member is
        ``rgb.png``, ``rgb.webp`` or ``rgb.jpg`` (the decoder tells them apart by their bytes).
        Samples with a label map add three columns: ``seg.png`` offset, size and sha256
        (readers that know only the first five columns read such indexes unchanged).
        ``members``: for each of :data:`INDEXED_MEMBERS` some sample has (the depth map, the record),
        one ``[offset, size, sha256]`` (or null) per row of ``samples``, so runs that read them (the
        3D-prior objective) need no pass over the tar either.
        """
        members = {name: column for name, column in self.members.items() if any(e is not None for e in column)}
        document = {"format": 1, "shard": shard_key, "sha256": shard_sha256, "samples": self.index}
        return {**document, "members": members} if members else document

    def close(self) -> None:
        self._tar.close()


def dataset_metadata(ctx: DatasetContext) -> dict:
    dataset = ctx.dataset
    if dataset.kind in MESH_KINDS:
        size = dataset.render.image_size
    elif dataset.kind == "fractal2d":
        size = dataset.fractal_render.image_size
    else:
        size = dataset.family.image_size
    return {"family": dataset.kind, "dataset": dataset.name, "classes": dataset.classes, "image_size": size,
            "splits": split_counts(ctx.spec, dataset.name), "seed": ctx.root_seed,
            "shards": len(shard_plan(ctx.spec, dataset.name))}


def _read_part(store: Store, key: str) -> ManifestEntry | None:
    """A shard's part record, or ``None`` when it is missing or damaged (the shard is then rendered again)."""
    try:
        return ManifestEntry.model_validate_json(store.get_bytes(key))
    except ObjectNotFoundError:
        return None
    except ValidationError as exc:
        log.warning("%s: damaged part record (%s); its shard will be rendered again", key, exc.errors()[0]["msg"])
        return None


def _merged_manifest(ctx: DatasetContext) -> Manifest:
    # a damaged manifest is rebuilt: every finished shard also has its part record
    manifest = read_rebuildable_manifest(ctx.store, dataset_manifest_key(ctx.dataset_id))
    if manifest is None:
        manifest = Manifest(kind="dataset", spec_hash=ctx.dataset_id.rsplit("-", 1)[-1], metadata=dataset_metadata(ctx))
    for key in ctx.store.list(f"datasets/{ctx.dataset_id}/parts/"):
        entry = _read_part(ctx.store, key)
        if entry is not None and manifest.entry(entry.key) != entry:
            manifest.upsert(entry)
    return manifest


def consolidate_manifest(spec: ExperimentSpec, store: Store, dataset_name: str) -> Manifest:
    """Merge every finished shard's part record into the dataset manifest and write it."""
    ctx = dataset_context(spec, store, dataset_name)
    manifest = _merged_manifest(ctx)
    write_manifest(store, dataset_manifest_key(ctx.dataset_id), manifest)
    return manifest


def shard_done(store: Store, dataset_id: str, task: ShardTask, manifest: Manifest | None) -> bool:
    """True when the shard is listed (manifest or part record) and verifies: the tar's size and SHA-256
    match the listing, and its sample index names this tar and digest.

    Costs one streamed read of the tar (SHA-256 at disk or network speed, constant memory) and one small
    JSON read per listed shard. A listed shard that fails is logged and rendered again (same bytes: shards
    are deterministic), which also re-writes its index, part record and manifest entry.
    """
    key = task.key(dataset_id)
    entry = manifest.entry(key) if manifest is not None else None
    if entry is None:
        entry = _read_part(store, part_key(dataset_id, task.split, task.shard))
    if entry is None:
        return False
    try:
        size, digest = store.checksum(key)
    except ObjectNotFoundError:
        log.warning("%s: listed but missing from the store; rendering it again", key)
        return False
    if (size, digest) != (entry.size, entry.sha256):
        log.warning("%s: %d bytes, sha256 %s…; listed as %d bytes, %s…: damaged, rendering it again",
                    key, size, digest[:12], entry.size, entry.sha256[:12])
        return False
    try:
        index = json.loads(store.get_bytes(shard_index_key(key)))
        intact = isinstance(index, dict) and index.get("shard") == key and index.get("sha256") == digest
    except (ObjectNotFoundError, ValueError):
        intact = False
    if not intact:
        log.warning("%s: sample index missing or damaged; rendering the shard again", shard_index_key(key))
    return intact


def write_shard(ctx: DatasetContext, task: ShardTask, progress: Callable[[int], None] | None = None) -> ManifestEntry:
    """Write one shard tar atomically, then its part record, then the merged manifest."""
    writer_fn = SAMPLE_WRITERS[ctx.dataset.kind]
    failures_before = len(ctx.failures)
    fd, tmp = tempfile.mkstemp(prefix="flatland-shard-", suffix=".tar")
    try:
        with os.fdopen(fd, "w+b") as handle:
            tar = DeterministicTarWriter(handle)
            for key, files in writer_fn(ctx, task):
                tar.write(key, files)
                if progress is not None:
                    progress(tar.samples)
            tar.close()
            handle.flush()
            handle.seek(0)
            size, digest = sha256_stream(handle)
        key = task.key(ctx.dataset_id)
        ctx.store.put_file(key, tmp)
        ctx.store.put_json(shard_index_key(key), tar.shard_index(key, digest))  # before the part record lists the shard
    finally:
        os.unlink(tmp)
    entry = ManifestEntry(key=key, size=size, sha256=digest, split=task.split, shard=task.shard, samples=tar.samples,
                          planned=task.samples, failures=ctx.failures[failures_before:])
    ctx.store.put_json(part_key(ctx.dataset_id, task.split, task.shard), entry.model_dump(mode="json"))
    write_manifest(ctx.store, dataset_manifest_key(ctx.dataset_id), _merged_manifest(ctx))
    return entry


ProgressFn = Callable[[str, int, int], None]


def render_shards(spec: ExperimentSpec, store: Store, tasks: list[ShardTask],
                  progress: ProgressFn | None = None) -> dict:
    """Write the given shards (any datasets), skipping finished ones; return a summary."""
    summary = {"written": [], "skipped": [], "failures": [], "samples": 0}
    contexts: dict[str, DatasetContext] = {}
    manifests: dict[str, Manifest | None] = {}
    # One progress bar per dataset: shards done of that dataset's shards in ``tasks``.
    per_dataset_total = {name: sum(t.dataset == name for t in tasks) for name in {t.dataset for t in tasks}}
    per_dataset_done = dict.fromkeys(per_dataset_total, 0)
    for task in tasks:
        if task.dataset not in contexts:
            contexts[task.dataset] = dataset_context(spec, store, task.dataset)
            manifests[task.dataset] = read_rebuildable_manifest(store, dataset_manifest_key(contexts[task.dataset].dataset_id))
        ctx = contexts[task.dataset]
        label = f"render:{task.dataset}"
        per_dataset_done[task.dataset] += 1
        if shard_done(store, ctx.dataset_id, task, manifests[task.dataset]):
            summary["skipped"].append(task.key(ctx.dataset_id))
            if progress is not None:
                progress(label, per_dataset_done[task.dataset], per_dataset_total[task.dataset])
            continue
        entry = write_shard(ctx, task)
        summary["written"].append(entry.key)
        summary["samples"] += entry.samples
        summary["failures"].extend(entry.failures)
        if progress is not None:
            progress(label, per_dataset_done[task.dataset], per_dataset_total[task.dataset])
    for name, ctx in contexts.items():  # heal entries lost to concurrent manifest writes
        manifest = read_rebuildable_manifest(store, dataset_manifest_key(ctx.dataset_id))
        listed = {e.key for e in manifest.entries} if manifest is not None else set()
        if any(t.dataset == name and t.key(ctx.dataset_id) not in listed for t in tasks):
            consolidate_manifest(spec, store, name)
    return summary


def render_dataset(spec: ExperimentSpec, store: Store, dataset_name: str, progress: ProgressFn | None = None,
                   contact_sheet: bool = True) -> dict:
    """Every shard of one dataset (resuming), then its contact sheet."""
    summary = render_shards(spec, store, shard_plan(spec, dataset_name), progress)
    if contact_sheet:
        from services.render.contact import write_contact_sheet

        summary["contact_sheet"] = write_contact_sheet(spec, store, dataset_name)
    return summary
