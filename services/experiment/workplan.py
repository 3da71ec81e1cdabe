"""How an experiment's batch work splits into items, and which Job index does which item.

This is the contract between the Kubernetes manifests (how many completions an Indexed
Job gets) and the stages' ``run_job(index=..., count=...)`` (which items an index does):

* meshgen: the work items are the classes of every dataset whose family meshgen builds
  (procsynth, morphsynth, fractal2d). Class ``c`` of each such dataset goes to index
  ``c % count``.
* render: the work items are every ``(dataset, split, shard)`` in spec order (datasets
  in the order of ``spec.datasets``, then ``train`` before ``val``, then shard number);
  item ``i`` of that flattened list goes to index ``i % count``.

The shard counts come from the render stage's own plan (through ``services.render.api``,
import-light), so the manifests and the workers cannot disagree.
"""

from __future__ import annotations

from typing import NamedTuple

from services.common.spec.experiment import DatasetSpec, ExperimentSpec
from services.meshgen.api import MESH_FAMILIES
from services.render.api import SPLITS, all_shards, dataset_shards, layout


class ShardItem(NamedTuple):
    """One render work item: one WebDataset shard of one split of one dataset."""

    dataset: str
    split: str
    shard: int


class ClassItem(NamedTuple):
    """One meshgen work item: one class of one dataset."""

    dataset: str
    class_index: int


def sample_count(dataset: DatasetSpec) -> int:
    """Images the render stage makes for ``dataset`` (both splits together)."""
    return sum(split_sizes(dataset).values())


def split_sizes(dataset: DatasetSpec) -> dict[str, int]:
    """Samples per split, ``{"train": n_train, "val": n_val}``, as the render stage numbers them."""
    lay = layout(dataset)
    return {split: lay.count(split) for split in SPLITS}


def shard_counts(dataset: DatasetSpec) -> dict[str, int]:
    """Shards per split (0 for an empty split)."""
    counts = dict.fromkeys(SPLITS, 0)
    for task in dataset_shards(dataset):
        counts[task.split] += 1
    return counts


def render_items(spec: ExperimentSpec) -> list[ShardItem]:
    """Every shard of the experiment, flattened in spec order (dataset, split, shard)."""
    return [ShardItem(t.dataset, t.split, t.shard) for t in all_shards(spec)]


def meshgen_items(spec: ExperimentSpec) -> list[ClassItem]:
    """Every class meshgen builds, dataset by dataset in spec order."""
    return [
        ClassItem(d.name, c)
        for d in spec.datasets
        if d.family.family in MESH_FAMILIES and d.meshes_from is None
        for c in range(d.classes)
    ]


def _check_index(index: int, count: int) -> None:
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if not 0 <= index < count:
        raise ValueError(f"index must be in [0, {count}), got {index}")


def render_items_for_index(spec: ExperimentSpec, index: int, count: int) -> list[ShardItem]:
    """The shards completion ``index`` of ``count`` renders: flattened item i → index i % count."""
    _check_index(index, count)
    return render_items(spec)[index::count]


def meshgen_items_for_index(spec: ExperimentSpec, index: int, count: int) -> list[ClassItem]:
    """The classes completion ``index`` of ``count`` builds: class c → index c % count."""
    _check_index(index, count)
    return [item for item in meshgen_items(spec) if item.class_index % count == index]


def meshgen_completions(spec: ExperimentSpec) -> int:
    """Completions of the meshgen Indexed Job: the parallelism, capped so no index is idle (0: no meshgen work)."""
    largest = max((d.classes for d in spec.datasets if d.family.family in MESH_FAMILIES and d.meshes_from is None), default=0)
    return min(spec.cluster.meshgen_parallelism, largest)


def render_completions(spec: ExperimentSpec) -> int:
    """Completions of the render Indexed Job: the parallelism, capped by the number of shards (0: nothing to render)."""
    return min(spec.cluster.render_parallelism, len(render_items(spec)))


def neuro_task_count(spec: ExperimentSpec) -> int:
    """Tasks of the neuro stage: each scoring entry's (run, benchmark) pairs, plus its run pairs per benchmark when comparing."""
    total = 0
    for s in spec.scoring:
        total += len(s.runs) * len(s.benchmarks)
        if s.compare_models:
            total += len(s.runs) * (len(s.runs) - 1) // 2 * len(s.benchmarks)
    return total


def local_worker_count(stage: str, spec: ExperimentSpec, workers: int) -> int:
    """Worker processes ``flatland run`` gives ``stage``: ``workers``, capped so no share is empty (at least 1).

    train keeps one process: several pre-training runs would contend for the same GPU or
    cores, and one run spreads over devices with DDP under ``torchrun`` instead.
    """
    if stage == "meshgen":
        items = max((d.classes for d in spec.datasets if d.family.family in MESH_FAMILIES and d.meshes_from is None), default=0)
    elif stage == "render":
        items = len(render_items(spec))
    elif stage == "neuro":
        items = neuro_task_count(spec)
    else:
        items = 1
    return max(1, min(workers, items))
