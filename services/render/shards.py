"""Dataset writers: samples of one shard -> a deterministic WebDataset tar in the store.

A sample is a group of tar members sharing the basename ``<class:05d>_<instance>_<view:05d>``
(``rgb.png``, ``depth.npy``, ``seg.png``, ``mask.png``, ``json``, ``cls``; fractal
and noise-scene samples have no depth/mask). Tars are byte-identical for the same
spec: members in sample order, ``mtime=0``, ``uid=gid=0``, empty owner names,
mode 0644, USTAR format.

A shard counts only once its entry is in ``datasets/<id>/manifest.json``. Workers
of an Indexed Job write the manifest concurrently, so each finished shard first
writes its entry to ``datasets/<id>/parts/<split>-<shard>.json`` and every manifest
write merges all parts: an entry lost to a concurrent read-modify-write comes back
at the next write (and :func:`consolidate_manifest` at the end of every job).

Writers are found by family name through :data:`SAMPLE_WRITERS` (register with
:func:`sample_writer`).
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from services.common.errors import ObjectNotFoundError
from services.common.manifest import Manifest, ManifestEntry, read_manifest, write_manifest
from services.common.seeds import derive_seed
from services.common.spec.experiment import DatasetSpec, ExperimentSpec
from services.common.store import Store, sha256_stream
from services.render.plan import ShardTask, fractal_view, layout, shard_plan, split_counts

log = logging.getLogger(__name__)

Sample = tuple[str, dict[str, bytes]]  # (key, {extension: bytes})


def sample_key(class_index: int, instance: int, view: int) -> str:
    return f"{class_index:05d}_{instance}_{view:05d}"


def dataset_manifest_key(dataset_id: str) -> str:
    return f"datasets/{dataset_id}/manifest.json"


def part_key(dataset_id: str, split: str, shard: int) -> str:
    return f"datasets/{dataset_id}/parts/{split}-{shard:05d}.json"


def contact_sheet_key(dataset_id: str) -> str:
    return f"datasets/{dataset_id}/contact-sheet.png"


def mesh_key(dataset_id: str, class_index: int, instance: int) -> str:
    return f"meshes/{dataset_id}/{class_index:05d}/{instance}.glb"


def ifs_key(dataset_id: str, class_index: int) -> str:
    return f"meshes/{dataset_id}/{class_index:05d}/ifs.json"


class DeterministicTarWriter:
    """Write samples into a tar file with fixed metadata (same samples -> same bytes)."""

    def __init__(self, fileobj):
        self._tar = tarfile.open(fileobj=fileobj, mode="w", format=tarfile.USTAR_FORMAT)
        self.samples = 0

    def write(self, key: str, files: dict[str, bytes]) -> None:
        for extension in files:
            data = files[extension]
            info = tarfile.TarInfo(f"{key}.{extension}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self.samples += 1

    def close(self) -> None:
        self._tar.close()


@dataclass
class DatasetContext:
    """What a writer needs to produce one dataset's samples."""

    spec: ExperimentSpec
    dataset: DatasetSpec
    dataset_id: str
    mesh_dataset_id: str  # whose meshes/IFS are drawn (differs with ``meshes_from``)
    root_seed: int
    store: Store
    failures: list[dict] = field(default_factory=list)
    _cache: dict = field(default_factory=dict)

    def upstream_manifest(self) -> Manifest:
        """meshgen's manifest for this dataset (:class:`ObjectNotFoundError` until meshgen wrote one)."""
        if "manifest" not in self._cache:
            key = f"meshes/{self.mesh_dataset_id}/manifest.json"
            manifest = read_manifest(self.store, key)
            if manifest is None:
                raise ObjectNotFoundError(f"no meshgen manifest at {key!r}: run meshgen for dataset "
                                          f"'{self.dataset.name}' first")
            self._cache["manifest"] = manifest
        return self._cache["manifest"]

    def upstream_entry(self, key: str) -> ManifestEntry:
        entry = self.upstream_manifest().entry(key)
        if entry is None:  # meshgen may have finished more classes since we read its manifest
            self._cache.pop("manifest", None)
            entry = self.upstream_manifest().entry(key)
        if entry is None:
            raise ObjectNotFoundError(f"{key!r} is not in the meshgen manifest yet (class not finished)")
        return entry


SampleWriter = Callable[[DatasetContext, ShardTask], Iterator[Sample]]
SAMPLE_WRITERS: dict[str, SampleWriter] = {}


def sample_writer(family: str):
    """Register the function that yields a shard's samples for ``family`` (duplicates are errors)."""

    def register(function: SampleWriter) -> SampleWriter:
        if family in SAMPLE_WRITERS:
            raise ValueError(f"a sample writer for family {family!r} is already registered")
        SAMPLE_WRITERS[family] = function
        return function

    return register


# --------------------------------------------------------------------------- 3D meshes


def mesh_records(ctx: DatasetContext, class_index: int, instance: int, views: list[int], mesh) -> list[dict]:
    """The records of some views of one mesh instance."""
    from services.render.renderer import mesh_frame
    from services.render.sampling import sample_view

    centre, radius = mesh_frame(mesh)
    key = mesh_key(ctx.mesh_dataset_id, class_index, instance)
    return [sample_view(ctx.dataset.render, root_seed=ctx.root_seed, dataset_id=ctx.dataset_id,
                        class_index=class_index, instance=instance, view=v, mesh_centre=centre,
                        mesh_radius=radius, mesh_key=key) for v in views]


def load_instance_mesh(ctx: DatasetContext, class_index: int, instance: int):
    """Load and verify one mesh against meshgen's manifest; raises on missing/corrupt/degenerate meshes."""
    from services.common.manifest import verify_bytes
    from services.render.renderer import check_mesh
    from services.render.views import load_glb

    key = mesh_key(ctx.mesh_dataset_id, class_index, instance)
    entry = ctx.upstream_entry(key)
    mesh = load_glb(verify_bytes(entry, ctx.store.get_bytes(key)))
    check_mesh(mesh)
    return mesh


def _group_views(ctx: DatasetContext, task: ShardTask) -> dict[tuple[int, int], list[int]]:
    lay = layout(ctx.dataset)
    groups: dict[tuple[int, int], list[int]] = {}
    for index in range(task.start, task.stop):
        cls, instance, view = lay.sample(task.split, index)
        groups.setdefault((cls, instance), []).append(view)
    return groups


def render_mesh_samples(ctx: DatasetContext, task: ShardTask) -> Iterator[Sample]:
    """procsynth / morphsynth: each mesh uploaded once, then its views rendered."""
    from services.render.renderer import DegenerateMeshError
    from services.render.views import encode_view, get_renderer

    settings = ctx.dataset.render
    renderer = get_renderer(settings.image_size, settings.backend)
    for (cls, instance), views in _group_views(ctx, task).items():
        try:
            mesh = load_instance_mesh(ctx, cls, instance)
            renderer.set_mesh(mesh, settings.material.model_dump(mode="json"),
                              token=(ctx.dataset_id, cls, instance))
        except (DegenerateMeshError, ValueError) as exc:
            # reported per item; the rest of the shard goes on
            ctx.failures.append({"item": f"class {cls} instance {instance}", "views": len(views),
                                 "key": mesh_key(ctx.mesh_dataset_id, cls, instance), "message": str(exc)})
            log.warning("skipping class %d instance %d: %s", cls, instance, exc)
            continue
        for record in mesh_records(ctx, cls, instance, views, mesh):
            view = renderer.render(record)
            yield (sample_key(cls, instance, record["view"]),
                   encode_view(view, cls, json.dumps(record, sort_keys=True).encode("utf-8")))


sample_writer("procsynth")(render_mesh_samples)
sample_writer("morphsynth")(render_mesh_samples)


# --------------------------------------------------------------------------- fractals

FRACTAL_BATCH = 32


def load_ifs(ctx: DatasetContext, class_index: int) -> dict:
    from services.common.manifest import verify_bytes

    key = ifs_key(ctx.mesh_dataset_id, class_index)
    cache = ctx._cache.setdefault("ifs", {})
    if key not in cache:
        entry = ctx.upstream_entry(key)
        cache[key] = json.loads(verify_bytes(entry, ctx.store.get_bytes(key)))
    return cache[key]


def ifs_instance_maps(ifs: dict, instance: int, weight_step: float) -> np.ndarray:
    """(n, 6) maps of one instance: meshgen's ``ifs_variants`` of the class's maps."""
    from services.meshgen.fractal2d import ifs_variants  # lazy: meshgen is a sibling stage

    variants = ifs_variants(np.asarray(ifs["maps"], dtype=float), weight_step)
    if not 0 <= instance < len(variants):
        raise ValueError(f"instance {instance} out of range: the class has {len(variants)} variants")
    return np.asarray(variants[instance], dtype=float)


def fractal_records(ctx: DatasetContext, task: ShardTask) -> list[dict]:
    lay = layout(ctx.dataset)
    fr = ctx.dataset.fractal_render
    records = []
    for index in range(task.start, task.stop):
        cls, instance, slot = lay.sample(task.split, index)
        flip, drawing = fractal_view(ctx.dataset, task.split, slot)
        ifs = load_ifs(ctx, cls)
        maps = ifs_instance_maps(ifs, instance, ctx.dataset.family.weight_step)
        records.append({
            "kind": "fractal", "dataset_id": ctx.dataset_id, "class_index": cls, "instance": instance, "view": slot,
            "flip": flip, "drawing": drawing,
            "seed": derive_seed(ctx.root_seed, ctx.dataset_id, cls, instance, slot),
            "image_size": fr.image_size, "points": fr.points, "patch": fr.patch,
            "maps": maps.tolist(), "probs": list(ifs["probs"]), "ifs_key": ifs_key(ctx.mesh_dataset_id, cls),
        })
    return records


class RenderDeviceError(ValueError):
    """A requested compute device is not available."""


def draw_fractal_records(records: list[dict], device: str | None = None) -> np.ndarray:
    """(len(records), s, s) uint8 images of fractal records (all the same size and point count)."""
    from services.render.fractal import draw_fractals

    if not records:
        return np.zeros((0, 0, 0), dtype=np.uint8)
    first = records[0]
    return draw_fractals([(np.asarray(r["maps"]), np.asarray(r["probs"])) for r in records],
                         [r["seed"] for r in records], image_size=first["image_size"], points=first["points"],
                         patch=first["patch"], flips=[r["flip"] for r in records], device=device)


def fractal_device(setting: str) -> str | None:
    """The torch device for ``FractalRenderSettings.device`` (None: numpy on the CPU)."""
    if setting == "cpu":
        return None
    try:
        import torch
    except ImportError:
        torch = None
    available = torch is not None and torch.cuda.is_available()
    if setting == "cuda" and not available:
        raise RenderDeviceError("fractal_render.device is 'cuda' but torch sees no CUDA device")
    return "cuda" if available else None


@sample_writer("fractal2d")
def fractal_samples(ctx: DatasetContext, task: ShardTask) -> Iterator[Sample]:
    from services.render.views import encode_png

    records = fractal_records(ctx, task)
    device = fractal_device(ctx.dataset.fractal_render.device)
    for start in range(0, len(records), FRACTAL_BATCH):
        batch = records[start:start + FRACTAL_BATCH]
        for record, image in zip(batch, draw_fractal_records(batch, device)):
            cls = record["class_index"]
            seg = np.where(image > 0, np.uint16(cls + 1), np.uint16(0)).astype(np.uint16)
            yield (sample_key(cls, record["instance"], record["view"]), {
                "rgb.png": encode_png(np.repeat(image[..., None], 3, axis=2)),
                "seg.png": encode_png(seg),
                "json": json.dumps(record, sort_keys=True).encode("utf-8"),
                "cls": str(cls).encode("ascii"),
            })


# --------------------------------------------------------------------------- noise scenes


@sample_writer("noisescenes")
def noise_scene_samples(ctx: DatasetContext, task: ShardTask) -> Iterator[Sample]:
    from services.render.scenes import dominant_class, draw_scene, sample_scene
    from services.render.views import encode_png

    lay = layout(ctx.dataset)
    for index in range(task.start, task.stop):
        _, _, scene = lay.sample(task.split, index)
        record = sample_scene(ctx.dataset.family, ctx.dataset.classes, root_seed=ctx.root_seed,
                              dataset_id=ctx.dataset_id, scene=scene)
        rgb, labels = draw_scene(record)
        cls = dominant_class(labels)
        record["class_index"] = cls
        yield (sample_key(cls, 0, scene), {
            "rgb.png": encode_png(rgb),
            "seg.png": encode_png(labels),
            "json": json.dumps(record, sort_keys=True).encode("utf-8"),
            "cls": str(cls).encode("ascii"),
        })


# --------------------------------------------------------------------------- shards and manifest


def dataset_context(spec: ExperimentSpec, store: Store, dataset_name: str) -> DatasetContext:
    dataset = spec.dataset(dataset_name)
    if dataset.kind not in SAMPLE_WRITERS:
        raise ValueError(f"dataset '{dataset_name}': render has no writer for family {dataset.kind!r} "
                         f"(known: {sorted(SAMPLE_WRITERS)})")
    mesh_id = spec.mesh_dataset_id(dataset_name) if hasattr(spec, "mesh_dataset_id") else spec.dataset_id(dataset_name)
    return DatasetContext(spec=spec, dataset=dataset, dataset_id=spec.dataset_id(dataset_name), mesh_dataset_id=mesh_id,
                          root_seed=spec.dataset_seed(dataset), store=store)


def dataset_metadata(ctx: DatasetContext) -> dict:
    dataset = ctx.dataset
    if dataset.kind in ("procsynth", "morphsynth"):
        size = dataset.render.image_size
    elif dataset.kind == "fractal2d":
        size = dataset.fractal_render.image_size
    else:
        size = dataset.family.image_size
    return {"family": dataset.kind, "dataset": dataset.name, "classes": dataset.classes, "image_size": size,
            "splits": split_counts(ctx.spec, dataset.name), "seed": ctx.root_seed,
            "shards": len(shard_plan(ctx.spec, dataset.name))}


def _merged_manifest(ctx: DatasetContext) -> Manifest:
    manifest = read_manifest(ctx.store, dataset_manifest_key(ctx.dataset_id))
    if manifest is None:
        manifest = Manifest(kind="dataset", spec_hash=ctx.dataset_id.rsplit("-", 1)[-1], metadata=dataset_metadata(ctx))
    for key in ctx.store.list(f"datasets/{ctx.dataset_id}/parts/"):
        entry = ManifestEntry.model_validate(ctx.store.get_json(key))
        if manifest.entry(entry.key) != entry:
            manifest.upsert(entry)
    return manifest


def consolidate_manifest(spec: ExperimentSpec, store: Store, dataset_name: str) -> Manifest:
    """Merge every finished shard's part record into the dataset manifest and write it."""
    ctx = dataset_context(spec, store, dataset_name)
    manifest = _merged_manifest(ctx)
    write_manifest(store, dataset_manifest_key(ctx.dataset_id), manifest)
    return manifest


def shard_done(store: Store, dataset_id: str, task: ShardTask, manifest: Manifest | None) -> bool:
    """True when the shard is listed (manifest or part record) and its tar has the listed size."""
    key = task.key(dataset_id)
    entry = manifest.entry(key) if manifest is not None else None
    if entry is None and store.exists(part_key(dataset_id, task.split, task.shard)):
        entry = ManifestEntry.model_validate(store.get_json(part_key(dataset_id, task.split, task.shard)))
    return entry is not None and store.exists(key) and store.size(key) == entry.size


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
            manifests[task.dataset] = read_manifest(store, dataset_manifest_key(contexts[task.dataset].dataset_id))
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
        manifest = read_manifest(store, dataset_manifest_key(ctx.dataset_id))
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
