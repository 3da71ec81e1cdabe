"""What a sample writer is given, and the table of writers by dataset family.

A *sample writer* turns one :class:`~services.render.plan.ShardTask` of a dataset into
its samples: ``(key, {extension: bytes})`` pairs, in sample order. Each family
registers its writer with :func:`sample_writer`; :mod:`services.render.output` writes
whatever a writer yields into a shard.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from services.common.errors import ObjectNotFoundError
from services.common.manifest import Manifest, ManifestEntry, read_manifest
from services.common.spec.experiment import DatasetSpec, ExperimentSpec
from services.common.store import Store
from services.meshgen.api import manifest_key as meshgen_manifest_key
from services.render.plan import ShardTask

Sample = tuple[str, dict[str, bytes]]  # (key, {extension: bytes})


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
            key = meshgen_manifest_key(self.mesh_dataset_id)
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


def dataset_context(spec: ExperimentSpec, store: Store, dataset_name: str) -> DatasetContext:
    dataset = spec.dataset(dataset_name)
    if dataset.kind not in SAMPLE_WRITERS:
        raise ValueError(f"dataset '{dataset_name}': render has no writer for family {dataset.kind!r} "
                         f"(known: {sorted(SAMPLE_WRITERS)})")
    mesh_id = spec.mesh_dataset_id(dataset_name) if hasattr(spec, "mesh_dataset_id") else spec.dataset_id(dataset_name)
    return DatasetContext(spec=spec, dataset=dataset, dataset_id=spec.dataset_id(dataset_name), mesh_dataset_id=mesh_id,
                          root_seed=spec.dataset_seed(dataset), store=store)
