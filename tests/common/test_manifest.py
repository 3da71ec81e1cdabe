"""Manifests: a damaged one is a store problem naming its key, never the client's bad input."""

from __future__ import annotations

import grpc
import pytest

from services.common.errors import IntegrityError
from services.common.manifest import Manifest, ManifestEntry, read_manifest, verify_bytes, write_manifest
from services.common.status import message_for, status_for_exception
from services.common.store import LocalStore, sha256_bytes

KEY = "datasets/demo-0123456789ab/manifest.json"


@pytest.fixture
def store(tmp_path):
    store = LocalStore(tmp_path / "store")
    write_manifest(store, KEY, Manifest(kind="dataset", entries=[
        ManifestEntry(key="datasets/demo-0123456789ab/train-00000.tar", size=3, sha256=sha256_bytes(b"abc"))]))
    return store


@pytest.mark.parametrize("damage", [
    lambda data: data[: len(data) // 2],  # truncated
    lambda data: b"",  # emptied
    lambda data: b"\xff\xfe" + data,  # not UTF-8
    lambda data: b'{"kind": "dataset", "entries": [{"key": 5}]}',  # JSON, wrong shape
    lambda data: b"[]",
], ids=["truncated", "empty", "binary", "wrong-shape", "not-an-object"])
def test_a_damaged_manifest_is_an_integrity_error_naming_its_key(store, damage):
    store.put_bytes(KEY, damage(store.get_bytes(KEY)))
    with pytest.raises(IntegrityError) as info:
        read_manifest(store, KEY)
    assert str(info.value).startswith(f"{KEY}: damaged manifest")
    assert status_for_exception(info.value) == grpc.StatusCode.DATA_LOSS  # not INVALID_ARGUMENT (the client's spec)
    assert KEY in message_for(info.value)


def test_an_intact_manifest_reads_back_and_verify_bytes_names_the_listing(store):
    manifest = read_manifest(store, KEY)
    (entry,) = manifest.entries
    assert verify_bytes(entry, b"abc") == b"abc"
    with pytest.raises(IntegrityError, match=f"{entry.key}: 2 bytes, done.json says 3"):
        verify_bytes(entry, b"ab", listed_in="done.json")
    with pytest.raises(IntegrityError, match=f"{entry.key}: sha256 .*its manifest entry says"):
        verify_bytes(entry, b"abd")
