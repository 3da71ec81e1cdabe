"""Manifests: the list of objects a stage finished, each with size and sha256.

An object counts as done only once its entry is in the manifest, so a crashed
worker leaves nothing half-counted. A reader verifies what it reads against the
entry (:func:`verify_manifest`, :func:`verify_entry`).
"""

from __future__ import annotations

import datetime as _dt
import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.common.errors import IntegrityError, ObjectNotFoundError
from services.common.store import Store, sha256_bytes

log = logging.getLogger(__name__)


class ManifestEntry(BaseModel):
    model_config = ConfigDict(extra="allow")

    key: str = Field(description="Store key of the object.")
    size: int = Field(ge=0, description="Size in bytes.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the object's bytes, hex.")


class Manifest(BaseModel):
    """A stage's record of finished objects plus whatever metadata the stage adds."""

    model_config = ConfigDict(extra="allow")

    kind: str = Field(description="What the manifest lists, e.g. 'meshes' or 'dataset'.")
    spec_hash: str = Field(default="", description="Content hash of the spec that made these objects.")
    entries: list[ManifestEntry] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    updated: str = Field(default="", description="UTC time of the last write.")

    def entry(self, key: str) -> ManifestEntry | None:
        for e in self.entries:
            if e.key == key:
                return e
        return None

    def upsert(self, entry: ManifestEntry) -> None:
        self.entries = [e for e in self.entries if e.key != entry.key] + [entry]
        self.entries.sort(key=lambda e: e.key)


def put_with_entry(store: Store, key: str, data: bytes, **extra: Any) -> ManifestEntry:
    """Write ``data`` at ``key`` and return its manifest entry."""
    store.put_bytes(key, data)
    return ManifestEntry(key=key, size=len(data), sha256=sha256_bytes(data), **extra)


def entry_for(store: Store, key: str, **extra: Any) -> ManifestEntry:
    """The manifest entry of an object already in the store (streams it to hash it)."""
    size, digest = store.checksum(key)
    return ManifestEntry(key=key, size=size, sha256=digest, **extra)


def write_manifest(store: Store, key: str, manifest: Manifest) -> None:
    manifest.updated = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    store.put_bytes(key, manifest.model_dump_json(indent=2).encode("utf-8"))


def read_manifest(store: Store, key: str) -> Manifest | None:
    """The manifest at ``key``, or ``None`` if there is none yet.

    A manifest that does not parse (truncated, overwritten) is a damaged store object, not a bad
    request: :class:`IntegrityError` naming ``key`` (DATA_LOSS over gRPC), never a ValidationError.
    """
    if not store.exists(key):
        return None
    data = store.get_bytes(key)
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(document)"
        raise IntegrityError(f"{key}: damaged manifest ({len(data)} bytes; {where}: {first['msg'][:200]}); "
                             "re-run the stage that writes it") from None


def read_rebuildable_manifest(store: Store, key: str) -> Manifest | None:
    """Like :func:`read_manifest`, but a damaged manifest is logged and treated as absent.

    For writers that keep a record per finished item (render's part records, meshgen's
    ``class.json``) and so can rebuild the manifest from them; readers use :func:`read_manifest`.
    """
    try:
        return read_manifest(store, key)
    except IntegrityError as exc:
        log.warning("%s; rebuilding it from the per-item records", exc)
        return None


def verify_entry(store: Store, entry: ManifestEntry) -> None:
    """Raise :class:`IntegrityError` unless the stored object matches ``entry``."""
    try:
        size, digest = store.checksum(entry.key)
    except ObjectNotFoundError:
        raise IntegrityError(f"{entry.key}: listed in the manifest but missing from the store") from None
    if size != entry.size:
        raise IntegrityError(f"{entry.key}: size {size} bytes, manifest says {entry.size}")
    if digest != entry.sha256:
        raise IntegrityError(f"{entry.key}: sha256 {digest[:12]}…, manifest says {entry.sha256[:12]}… (corrupted?)")


def verify_bytes(entry: ManifestEntry, data: bytes, listed_in: str = "its manifest entry") -> bytes:
    """Check bytes already read against ``entry`` (``listed_in`` names where it comes from); return them unchanged."""
    if len(data) != entry.size:
        raise IntegrityError(f"{entry.key}: {len(data)} bytes, {listed_in} says {entry.size} (truncated or corrupted)")
    digest = sha256_bytes(data)
    if digest != entry.sha256:
        raise IntegrityError(f"{entry.key}: sha256 {digest[:12]}…, {listed_in} says {entry.sha256[:12]}… "
                             "(content does not match: corrupted?)")
    return data


def verify_manifest(store: Store, manifest: Manifest) -> list[str]:
    """Check every entry; return the list of problems (empty when all is well)."""
    problems = []
    for entry in manifest.entries:
        try:
            verify_entry(store, entry)
        except IntegrityError as exc:
            problems.append(str(exc))
    return problems
