"""What each stage needs from the store before it can start (``flatland wait``)."""

from __future__ import annotations

from services.common.manifest import read_manifest
from services.common.spec import ExperimentSpec
from services.common.store import Store

MESH_FAMILIES = ("procsynth", "morphsynth", "fractal2d")


def _dataset_complete(store: Store, key: str) -> bool:
    manifest = read_manifest(store, key)
    return manifest is not None and bool(manifest.metadata.get("complete"))


def missing_inputs(stage: str, spec: ExperimentSpec, store: Store) -> list[str]:
    """Store keys (or names) ``stage`` still waits for; empty when it can start."""
    missing: list[str] = []
    if stage == "render":
        for d in spec.datasets:
            if d.kind in MESH_FAMILIES:
                key = f"meshes/{spec.dataset_id(d.name)}/manifest.json"
                if not _dataset_complete(store, key):
                    missing.append(key)
    elif stage == "train":
        needed = {name for run in spec.pretrain for name in run.datasets}
        for d in spec.datasets:
            if d.name in needed:
                key = f"datasets/{spec.dataset_id(d.name)}/manifest.json"
                if not _dataset_complete(store, key):
                    missing.append(key)
    elif stage == "neuro":
        needed = {run for s in spec.scoring for run in s.runs}
        for run in spec.pretrain:
            if run.name in needed:
                key = f"runs/{spec.run_id(run.name)}/done.json"
                if not store.exists(key):
                    missing.append(key)
    return missing
