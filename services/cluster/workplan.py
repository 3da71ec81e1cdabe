"""How an experiment's batch work splits into items, and which Job index does which item.

This is the contract between the Kubernetes manifests (how many completions an Indexed
Job gets) and the stages' ``run_job(index=..., count=...)`` (which items an index does):

* meshgen: the work items are the classes of every dataset whose family meshgen builds
  (procsynth, morphsynth, fractal2d). Class ``c`` of each such dataset goes to index
  ``c % count``.
* render: the work items are every ``(dataset, split, shard)`` in spec order (datasets
  in the order of ``spec.datasets``, then ``train`` before ``val``, then shard number);
  item ``i`` of that flattened list goes to index ``i % count``.

The shard counts below must agree with the render stage's writer
(``services/render/plan.py``; ``tests/cluster/test_experiment_jobs.py`` checks that they do):
samples = classes × instances × views (fractal2d: × flips × drawings; noisescenes: scenes),
validation held out per instance (see :func:`split_sizes`), each split ceil-divided by
``shard_size``.
"""

from __future__ import annotations

from typing import NamedTuple

from services.common.spec.experiment import DatasetSpec, ExperimentSpec

MESH_FAMILIES = ("procsynth", "morphsynth", "fractal2d")
SPLITS = ("train", "val")
FRACTAL_WEIGHT_VARIANTS = 25  # the original system plus 4 scalings of each of 6 coefficients (FractalDB)
MORPHSYNTH_SAMPLES = 3


class ShardItem(NamedTuple):
    """One render work item: one WebDataset shard of one split of one dataset."""

    dataset: str
    split: str
    shard: int


class ClassItem(NamedTuple):
    """One meshgen work item: one class of one dataset."""

    dataset: str
    class_index: int


def instances_per_class(dataset: DatasetSpec) -> int:
    """Meshes (3D) or IFS weight variants (fractal2d) per class; noisescenes has no classes of instances."""
    if dataset.instances_per_class is not None:
        return dataset.instances_per_class
    family = dataset.family
    if family.family == "procsynth":
        return family.meshes_per_class
    if family.family == "morphsynth":
        return MORPHSYNTH_SAMPLES
    if family.family == "fractal2d":
        return FRACTAL_WEIGHT_VARIANTS
    return 1


def sample_count(dataset: DatasetSpec) -> int:
    """Images the render stage makes for ``dataset`` (both splits together)."""
    family = dataset.family
    if family.family == "noisescenes":
        return family.scenes
    if family.family == "fractal2d":
        per_instance = family.flips * dataset.fractal_render.drawings_per_variant
    else:
        per_instance = dataset.render.views_per_instance
    return dataset.classes * instances_per_class(dataset) * per_instance


def shard_size(dataset: DatasetSpec) -> int:
    """Samples per shard of ``dataset`` (the setting of its family)."""
    family = dataset.family
    if family.family == "noisescenes":
        return family.shard_size
    if family.family == "fractal2d":
        return dataset.fractal_render.shard_size
    return dataset.render.shard_size


def split_sizes(dataset: DatasetSpec) -> dict[str, int]:
    """Samples per split: ``{"train": n_train, "val": n_val}``, summing to :func:`sample_count`.

    The validation samples are held out per unit, as the render stage numbers them
    (``services/render/plan.py``): the last ``round(views_per_instance * val_fraction)`` views
    of every 3D instance; the last ``round(drawings_per_variant * val_fraction)`` drawings of
    every fractal (variant, flip); the last ``round(scenes * val_fraction)`` noise scenes.
    ``round`` is Python's (half to even), as there.
    """
    family = dataset.family
    if family.family == "noisescenes":
        units, per_unit, val_fraction = 1, family.scenes, family.val_fraction
        val_per_unit = round(per_unit * val_fraction)
    elif family.family == "fractal2d":
        settings = dataset.fractal_render
        units = dataset.classes * instances_per_class(dataset) * family.flips
        per_unit = settings.drawings_per_variant
        val_per_unit = round(per_unit * settings.val_fraction)
    else:
        settings = dataset.render
        units = dataset.classes * instances_per_class(dataset)
        per_unit = settings.views_per_instance
        val_per_unit = round(per_unit * settings.val_fraction)
    return {"train": units * (per_unit - val_per_unit), "val": units * val_per_unit}


def shard_counts(dataset: DatasetSpec) -> dict[str, int]:
    """Shards per split (ceil of samples / shard_size; 0 for an empty split)."""
    size = shard_size(dataset)
    return {split: -(-n // size) for split, n in split_sizes(dataset).items()}


def render_items(spec: ExperimentSpec) -> list[ShardItem]:
    """Every shard of the experiment, flattened in spec order (dataset, split, shard)."""
    items: list[ShardItem] = []
    for dataset in spec.datasets:
        counts = shard_counts(dataset)
        for split in SPLITS:
            items.extend(ShardItem(dataset.name, split, shard) for shard in range(counts[split]))
    return items


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
