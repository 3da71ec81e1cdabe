"""What each stage needs from the store before it can start (``flatland wait``).

Each check also heals manifests that parallel workers left incomplete (entries lost to
concurrent read-then-write updates), so a finished stage is always seen as finished.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from services.common.spec import ExperimentSpec
from services.common.store import Store
from services.meshgen.api import MESH_FAMILIES, manifest_key, missing_classes
from services.render.api import consolidate_manifest, dataset_manifest_key, shard_plan


def _missing_meshes(spec: ExperimentSpec, store: Store) -> list[str]:
    missing = []
    for d in spec.datasets:
        if d.kind in MESH_FAMILIES and d.meshes_from is None:
            classes = missing_classes(spec, d.name, store)
            if classes:
                missing.append(f"{manifest_key(spec.dataset_id(d.name))} ({len(classes)} of {d.classes} classes)")
    return missing


def _missing_shards(spec: ExperimentSpec, store: Store, names: set[str]) -> list[str]:
    missing = []
    for d in spec.datasets:
        if d.name not in names:
            continue
        dataset_id = spec.dataset_id(d.name)
        planned = {t.key(dataset_id) for t in shard_plan(spec, d.name)}
        if next(iter(store.list(f"datasets/{dataset_id}/parts/")), None) is None:
            missing.append(f"{dataset_manifest_key(dataset_id)} (0 of {len(planned)} shards)")
            continue
        listed = {e.key for e in consolidate_manifest(spec, store, d.name).entries}
        if planned - listed:
            missing.append(f"{dataset_manifest_key(dataset_id)} ({len(planned - listed)} of {len(planned)} shards)")
    return missing


def missing_inputs(stage: str, spec: ExperimentSpec, store: Store) -> list[str]:
    """What ``stage`` still waits for (store keys with counts); empty when it can start."""
    if stage == "render":
        return _missing_meshes(spec, store)
    if stage == "train":
        names = {name for run in spec.pretrain for name in run.datasets}
        for entry in spec.evaluation.shape_bias + spec.evaluation.depth_probe:  # read after transfer, same job
            names |= {d for d in (getattr(entry, f, None) for f in ("conflict", "probe", "dataset")) if d is not None}
        if spec.evaluation.recoverability is not None:  # fitted to the rendered masks after transfer, same job
            names |= set(spec.evaluation.recoverability.datasets)
        return _missing_shards(spec, store, names)
    if stage == "neuro":
        needed = {run for s in spec.scoring for run in s.runs}
        return [
            f"runs/{spec.run_id(r.name)}/done.json"
            for r in spec.pretrain
            if r.name in needed and not store.exists(f"runs/{spec.run_id(r.name)}/done.json")
        ]
    return []


def wait_for_inputs(stage: str, spec: ExperimentSpec, store: Store, *, timeout: float, poll: float,
                    report: Callable[[str], None] = lambda line: None,
                    clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
    """Block until ``stage``'s inputs are complete in the store.

    Raises
    ------
    TimeoutError
        Still incomplete after ``timeout`` seconds; the message names what is missing.
    """
    deadline = clock() + timeout
    while True:
        missing = missing_inputs(stage, spec, store)
        if not missing:
            report(f"{stage}: inputs complete")
            return
        if clock() >= deadline:
            raise TimeoutError(f"{stage}: still waiting after {timeout:.0f} s for: {', '.join(missing[:10])}")
        report(f"{stage}: waiting for {len(missing)} input(s), e.g. {missing[0]}")
        sleep(poll)
