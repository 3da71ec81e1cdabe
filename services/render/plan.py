"""Which samples go to which shard, from the spec alone (import-light: no OpenGL).

Every dataset of an experiment is a list of samples per split, in a fixed order;
shard ``k`` of a split holds samples ``[k * shard_size, (k + 1) * shard_size)``.
:func:`all_shards` flattens the shards of every dataset (spec order, then split
``train`` before ``val``, then shard index) and :func:`shards_for_index` deals
them round-robin to Kubernetes Indexed Job completions:
``shards_for_index(spec, i, n) == [t for j, t in enumerate(all_shards(spec)) if j % n == i]``.

Sample order and splits per family:

- procsynth / morphsynth: (class, instance, view); of each instance's
  ``views_per_instance`` views, the last ``round(views * val_fraction)`` are validation.
- fractal2d: (class, variant, flip * drawings + drawing); of each (variant, flip)'s
  drawings, the last ``round(drawings * val_fraction)`` are validation.
- noisescenes: scene ``s`` is sample (0, 0, s); the last ``round(scenes * val_fraction)``
  scenes are validation (the class in a key is the scene's dominant class, known once drawn).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from services.common.spec.experiment import DatasetSpec, ExperimentSpec
from services.common.spec.meshgen import MESH_KINDS

SPLITS = ("train", "val")
NATURAL_INSTANCES = {"morphsynth": 3, "fractal2d": 25, "fitted": 1}


@dataclass(frozen=True)
class ShardTask:
    """One shard: samples ``[start, stop)`` of ``split`` of dataset ``dataset``."""

    dataset: str
    split: str
    shard: int
    start: int
    stop: int

    @property
    def samples(self) -> int:
        return self.stop - self.start

    def key(self, dataset_id: str) -> str:
        return shard_key(dataset_id, self.split, self.shard)

    def to_dict(self) -> dict:
        return asdict(self)


def shard_key(dataset_id: str, split: str, shard: int) -> str:
    return f"datasets/{dataset_id}/{split}-{shard:05d}.tar"


def instances_per_class(dataset: DatasetSpec) -> int:
    """Meshes (or IFS variants) per class: the spec's value or the family's natural count."""
    if dataset.instances_per_class is not None:
        return dataset.instances_per_class
    if dataset.kind == "procsynth":
        return dataset.family.meshes_per_class
    if dataset.kind == "noisescenes":
        return 1
    return NATURAL_INSTANCES[dataset.kind]


@dataclass(frozen=True)
class SplitLayout:
    """How one dataset's samples are numbered: ``views`` per (class, instance), ``val_views`` of them held out."""

    classes: int
    instances: int
    views: int
    val_views: int

    def count(self, split: str) -> int:
        per = self.val_views if split == "val" else self.views - self.val_views
        return self.classes * self.instances * per

    def sample(self, split: str, index: int) -> tuple[int, int, int]:
        """(class, instance, view) of the ``index``-th sample of ``split``."""
        per = self.val_views if split == "val" else self.views - self.val_views
        cls, rest = divmod(index, self.instances * per)
        instance, k = divmod(rest, per)
        return cls, instance, (self.views - self.val_views + k) if split == "val" else k


def layout(dataset: DatasetSpec) -> SplitLayout:
    """The sample numbering of a dataset (see the module docstring)."""
    kind = dataset.kind
    if kind in MESH_KINDS:
        r = dataset.render
        return SplitLayout(dataset.classes, instances_per_class(dataset), r.views_per_instance,
                           round(r.views_per_instance * r.val_fraction))
    if kind == "fractal2d":
        fr = dataset.fractal_render
        # views of one variant: flips x drawings; validation = the last drawings of every flip
        return SplitLayout(dataset.classes, instances_per_class(dataset), dataset.family.flips * fr.drawings_per_variant,
                           dataset.family.flips * round(fr.drawings_per_variant * fr.val_fraction))
    if kind == "noisescenes":
        fam = dataset.family
        # one pseudo-instance whose "views" are the scenes
        return SplitLayout(1, 1, fam.scenes, round(fam.scenes * fam.val_fraction))
    raise ValueError(f"render has no layout for family {kind!r}")


def fractal_view(dataset: DatasetSpec, split: str, view_slot: int) -> tuple[int, int]:
    """(flip, drawing) of a fractal sample's per-variant slot (see :meth:`SplitLayout.sample`)."""
    d = dataset.fractal_render.drawings_per_variant
    val = round(d * dataset.fractal_render.val_fraction)
    train = d - val
    flips = dataset.family.flips
    if split == "train":
        flip, drawing = divmod(view_slot, train)
    else:
        flip, k = divmod(view_slot - flips * train, val)
        drawing = train + k
    return flip, drawing


def shard_size(dataset: DatasetSpec) -> int:
    if dataset.kind in MESH_KINDS:
        return dataset.render.shard_size
    if dataset.kind == "fractal2d":
        return dataset.fractal_render.shard_size
    return dataset.family.shard_size


def shard_plan(spec: ExperimentSpec, dataset_name: str) -> list[ShardTask]:
    """Every shard of one dataset: train shards, then validation shards."""
    return dataset_shards(spec.dataset(dataset_name))


def dataset_shards(dataset: DatasetSpec) -> list[ShardTask]:
    """Every shard of ``dataset`` (a dataset spec alone: the plan needs nothing else)."""
    lay = layout(dataset)
    size = shard_size(dataset)
    tasks = []
    for split in SPLITS:
        total = lay.count(split)
        for shard, start in enumerate(range(0, total, size)):
            tasks.append(ShardTask(dataset.name, split, shard, start, min(start + size, total)))
    return tasks


def all_shards(spec: ExperimentSpec) -> list[ShardTask]:
    """Every shard of every dataset of the experiment, in spec order."""
    return [task for dataset in spec.datasets for task in shard_plan(spec, dataset.name)]


def shards_for_index(spec: ExperimentSpec, index: int, count: int) -> list[ShardTask]:
    """The shards completion ``index`` of ``count`` renders (round-robin over :func:`all_shards`)."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"need 0 <= index < count and count >= 1, got index={index}, count={count}")
    return [task for i, task in enumerate(all_shards(spec)) if i % count == index]


def split_counts(spec: ExperimentSpec, dataset_name: str) -> dict[str, int]:
    lay = layout(spec.dataset(dataset_name))
    return {split: lay.count(split) for split in SPLITS}
