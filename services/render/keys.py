"""Store keys of the render stage's outputs (meshgen's inputs are keyed in :mod:`services.meshgen.api`)."""

from __future__ import annotations

from services.render.plan import shard_key


def sample_key(class_index: int, instance: int, view: int) -> str:
    """Basename shared by one sample's tar members: ``<class:05d>_<instance>_<view:05d>``."""
    return f"{class_index:05d}_{instance}_{view:05d}"


def dataset_manifest_key(dataset_id: str) -> str:
    return f"datasets/{dataset_id}/manifest.json"


def part_key(dataset_id: str, split: str, shard: int) -> str:
    """A finished shard's own manifest entry, merged into the dataset manifest (see :mod:`services.render.output`)."""
    return f"datasets/{dataset_id}/parts/{split}-{shard:05d}.json"


def shard_index_key(shard_key: str) -> str:
    """Where a shard's sample index lies: ``datasets/<id>/<split>-<shard>.tar`` → ``….index.json``."""
    if not shard_key.endswith(".tar"):
        raise ValueError(f"not a shard key: {shard_key!r}")
    return shard_key[: -len(".tar")] + ".index.json"


def contact_sheet_key(dataset_id: str) -> str:
    return f"datasets/{dataset_id}/contact-sheet.png"


__all__ = ["contact_sheet_key", "dataset_manifest_key", "part_key", "sample_key", "shard_index_key", "shard_key"]
