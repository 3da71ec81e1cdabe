"""Dataset mixes (Table 2 of the proposal): a class budget split evenly across datasets.

A budget of 1000 classes over one, two or three datasets gives 1000, 500+500 or
333+333+333 classes. Each dataset's classes are drawn uniformly without
replacement (seeded by the run), and the chosen classes are relabelled into one
space: dataset 0's classes first (in their original order), then dataset 1's, ...
The mapping is saved as ``runs/<run_id>/label_map.json``::

    {"num_classes": 1000, "budget": 1000,
     "datasets": [{"dataset": "procsynth-a", "dataset_id": "procsynth-a-1a2b3c4d5e",
                   "available": 1000, "classes": [3, 17, ...], "labels": [0, 1, ...]}, ...]}
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.common.errors import FlatlandError, SpecError
from services.common.seeds import derive_rng
from services.common.spec.experiment import ExperimentSpec
from services.common.spec.train import PretrainSpec
from services.common.store import Store
from services.train.data import dataset_manifest


@dataclass(frozen=True)
class MixPart:
    dataset: str
    dataset_id: str
    available: int
    classes: tuple[int, ...]  # original class indices, sorted
    first_label: int

    @property
    def labels(self) -> list[int]:
        return list(range(self.first_label, self.first_label + len(self.classes)))

    def label_table(self) -> np.ndarray:
        """(available,) int64: new label per original class, -1 where left out."""
        table = np.full(self.available, -1, dtype=np.int64)
        table[list(self.classes)] = self.labels
        return table


@dataclass(frozen=True)
class LabelMap:
    budget: int | None
    parts: tuple[MixPart, ...]

    @property
    def num_classes(self) -> int:
        return sum(len(p.classes) for p in self.parts)

    def to_json(self) -> dict:
        return {
            "num_classes": self.num_classes,
            "budget": self.budget,
            "datasets": [
                {"dataset": p.dataset, "dataset_id": p.dataset_id, "available": p.available,
                 "classes": list(p.classes), "labels": p.labels}
                for p in self.parts
            ],
        }


def split_budget(budget: int, datasets: int) -> list[int]:
    """Classes per dataset: ``budget // datasets`` each (1000 over 3 → 333 each, as in Table 2)."""
    if datasets < 1:
        raise ValueError("a mix needs at least one dataset")
    share = budget // datasets
    if share < 1:
        raise FlatlandError(f"class budget {budget} is smaller than the number of datasets ({datasets})")
    return [share] * datasets


def plan_mix(available: dict[str, tuple[str, int]], run: PretrainSpec) -> LabelMap:
    """Choose each dataset's classes and their new labels.

    Parameters
    ----------
    available : dict
        dataset name → (dataset_id, number of classes it has).
    run : PretrainSpec
        Its ``datasets`` (order matters), ``class_budget`` and ``seed``.
    """
    shares = (
        [available[name][1] for name in run.datasets]
        if run.class_budget is None
        else split_budget(run.class_budget, len(run.datasets))
    )
    parts, next_label = [], 0
    for name, share in zip(run.datasets, shares):
        dataset_id, count = available[name]
        if share > count:
            raise SpecError(
                f"pretrain '{run.name}': class_budget {run.class_budget} asks for {share} classes from dataset "
                f"'{name}', which has only {count} (lower the budget or render more classes)"
            )
        rng = derive_rng(run.seed, "mix", run.name, name)
        chosen = np.sort(rng.choice(count, size=share, replace=False)) if share < count else np.arange(count)
        parts.append(MixPart(name, dataset_id, count, tuple(int(c) for c in chosen), next_label))
        next_label += share
    return LabelMap(run.class_budget, tuple(parts))


def mix_for_run(spec: ExperimentSpec, run: PretrainSpec, store: Store) -> LabelMap:
    """:func:`plan_mix` with class counts read from the rendered datasets' manifests."""
    available = {}
    for name in run.datasets:
        dataset_id = spec.dataset_id(name)
        manifest = dataset_manifest(store, dataset_id)
        classes = int(manifest.metadata.get("classes", spec.dataset(name).classes))
        available[name] = (dataset_id, classes)
    return plan_mix(available, run)
