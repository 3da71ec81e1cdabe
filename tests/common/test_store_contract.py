"""One contract for every store backend: LocalStore, and S3Store against a real loopback S3 server.

Each test takes the parametrised ``store`` fixture, so a behaviour pinned here holds
identically on a local directory, on a bucket, and on a bucket with a key prefix.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from services.common import store as store_module
from services.common.errors import IntegrityError, InvalidKeyError, ObjectNotFoundError
from services.common.manifest import (
    Manifest,
    ManifestEntry,
    entry_for,
    put_with_entry,
    read_manifest,
    verify_bytes,
    verify_entry,
    verify_manifest,
    write_manifest,
)
from services.common.store import LocalStore, Store, open_store

BACKENDS = ["local", "s3", "s3-prefix"]

# Keys that must be refused everywhere, with the reason each one is bad.
ESCAPING_KEYS = [
    "",  # empty
    "/etc/passwd",  # absolute
    "..",
    "../outside",
    "a/../../outside",
    ".",
    "./a",
    "a/./b",
    "a//b",  # empty segment
    "a/",  # trailing slash
    "a\\b",  # backslash
    "a\\..\\..\\b",
    "a\nb",  # control characters
    "a\x00b",
    "a\tb",
    "a\x7fb",
]
# Prefixes refused by list(); "" and a trailing "/" are fine for a prefix.
ESCAPING_PREFIXES = ["/a", "..", "../a", "a/../b", "./a", "a//b", "a\\b", "a\x00", "a//"]


def random_bytes(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size=n, dtype=np.uint8).tobytes()


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest) -> Store:
    if request.param == "local":
        return request.getfixturevalue("local_store")
    if request.param == "s3":
        return request.getfixturevalue("s3_store")
    from services.common.s3store import S3Store

    bucket = request.getfixturevalue("s3_bucket")
    return S3Store.from_url(f"s3://{bucket}/exp/one", part_size=5 * 1024 * 1024)


def tamper(store: Store, key: str, data: bytes) -> None:
    """Replace an object's bytes behind the store's back (a disk or bucket fault)."""
    if isinstance(store, LocalStore):
        (store.root / key).write_bytes(data)
    else:
        store.client.put_object(store.bucket, store.object_name(key), io.BytesIO(data), len(data))


# -- bytes, files, streams ------------------------------------------------------------
def test_put_get_bytes_round_trip(store: Store):
    payload = bytes(range(256)) * 37  # every byte value, not a multiple of any buffer size
    store.put_bytes("meshes/ds/00000/0.glb", payload)
    store.put_bytes("empty.bin", b"")
    assert store.get_bytes("meshes/ds/00000/0.glb") == payload
    assert store.get_bytes("empty.bin") == b""
    assert store.size("meshes/ds/00000/0.glb") == len(payload)
    assert store.size("empty.bin") == 0


def test_unicode_key_round_trip(store: Store):
    key = "runs/état/Ω-β test.json"
    store.put_json(key, {"ok": [1, 2]})
    assert store.get_json(key) == {"ok": [1, 2]}
    assert list(store.list("runs/")) == [key]


def test_put_file_get_file_round_trip(store: Store, tmp_path: Path):
    source = tmp_path / "src.tar"
    source.write_bytes(random_bytes(300_001, seed=1))
    store.put_file("datasets/ds/train-00000.tar", source)
    target = tmp_path / "nested" / "dir" / "copy.tar"  # parents are created
    store.get_file("datasets/ds/train-00000.tar", target)
    assert target.read_bytes() == source.read_bytes()
    assert store.size("datasets/ds/train-00000.tar") == source.stat().st_size


def test_get_file_of_missing_key_leaves_no_file(store: Store, tmp_path: Path):
    target = tmp_path / "out" / "missing.bin"
    with pytest.raises(ObjectNotFoundError, match="nope/missing.bin"):
        store.get_file("nope/missing.bin", target)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no temp file left behind


def test_read_range_returns_exactly_those_bytes(store: Store):
    data = random_bytes(300_000, 7)
    store.put_bytes("shards/a.tar", data)
    for offset, length in [(0, 1), (0, 512), (1234, 5000), (299_000, 1000), (131_072, 65_536)]:
        assert store.read_range("shards/a.tar", offset, length) == data[offset:offset + length]
    with pytest.raises(ObjectNotFoundError, match="shards/a.tar"):
        store.read_range("shards/a.tar", 299_990, 100)  # past the end: named, not a short read
    with pytest.raises(ObjectNotFoundError):
        store.read_range("shards/missing.tar", 0, 10)
    # the interface's fallback (for backends without a ranged read) agrees
    assert Store.read_range(store, "shards/a.tar", 1234, 5000) == data[1234:6234]


def test_stream_read_in_chunks(store: Store):
    payload = random_bytes(3 * 1024 * 1024 + 17, seed=2)
    store.put_bytes("big/blob.bin", payload)
    chunks = []
    with store.open_read("big/blob.bin") as stream:
        head = stream.read(5)
        while chunk := stream.read(65_536):
            assert len(chunk) <= 65_536
            chunks.append(chunk)
        assert stream.read(10) == b""  # at EOF
    assert head + b"".join(chunks) == payload
    assert len(chunks) > 40  # really read piecewise
    assert stream.closed
    with pytest.raises(ValueError):
        stream.read(1)  # reading a closed stream is an error, not silent garbage


def test_partial_read_then_close(store: Store):
    payload = random_bytes(2 * 1024 * 1024, seed=3)
    store.put_bytes("partial.bin", payload)
    for _ in range(15):  # more than any connection pool: closed streams must free their connection
        stream = store.open_read("partial.bin")
        assert stream.read(100) == payload[:100]
        stream.close()
    assert store.get_bytes("partial.bin") == payload


def test_missing_key_errors_name_the_key(store: Store):
    for operation in (store.get_bytes, store.open_read, store.size, store.checksum, store.get_json):
        with pytest.raises(ObjectNotFoundError) as info:
            operation("no/such/key.bin")
        assert "no/such/key.bin" in str(info.value)
    assert store.exists("no/such/key.bin") is False


def test_checksum_matches_hashlib(store: Store):
    payload = random_bytes(1_500_000, seed=4)
    store.put_bytes("a.bin", payload)
    assert store.checksum("a.bin") == (len(payload), hashlib.sha256(payload).hexdigest())


def test_json_round_trip_is_canonical(store: Store):
    store.put_json("x/meta.json", {"b": 1, "a": [1.5, "é"]})
    assert store.get_json("x/meta.json") == {"b": 1, "a": [1.5, "é"]}
    raw = store.get_bytes("x/meta.json")
    assert raw.index(b'"a"') < raw.index(b'"b"')  # sorted keys: same object, same bytes


# -- list ---------------------------------------------------------------------------
def test_list_prefix_semantics(store: Store):
    keys = ["a/b/c", "a/b/d/e", "a/bc", "a/bd/e", "ab", "b/x", "a/b/c2"]
    for key in keys:
        store.put_bytes(key, key.encode())
    assert list(store.list()) == sorted(keys)
    assert list(store.list("")) == sorted(keys)
    # A plain string prefix: "a/b" matches "a/b/c" and also "a/bc".
    assert list(store.list("a/b")) == ["a/b/c", "a/b/c2", "a/b/d/e", "a/bc", "a/bd/e"]
    assert list(store.list("a/b/")) == ["a/b/c", "a/b/c2", "a/b/d/e"]
    assert list(store.list("a/b/c")) == ["a/b/c", "a/b/c2"]
    assert list(store.list("a")) == ["a/b/c", "a/b/c2", "a/b/d/e", "a/bc", "a/bd/e", "ab"]
    assert list(store.list("b/x")) == ["b/x"]
    assert list(store.list("zzz")) == []
    assert list(store.list("zzz/")) == []


def test_list_is_recursive_and_sorted(store: Store):
    keys = [f"meshes/ds/{c:05d}/{i}.glb" for c in (10, 2, 0) for i in (11, 2, 0)]
    for key in keys:
        store.put_bytes(key, b"x")
    listed = list(store.list("meshes/ds/"))
    assert listed == sorted(keys)
    assert listed[0] == "meshes/ds/00000/0.glb" and listed[1] == "meshes/ds/00000/11.glb"  # string order


# -- exists, delete, overwrite --------------------------------------------------------
def test_exists_delete(store: Store):
    store.put_bytes("runs/r1/done.json", b"{}")
    store.put_bytes("runs/r1/metrics.jsonl", b"1\n")
    assert store.exists("runs/r1/done.json")
    assert not store.exists("runs/r1")  # a "directory" is not an object
    assert not store.exists("runs/r1/done")
    store.delete("runs/r1/done.json")
    assert not store.exists("runs/r1/done.json")
    with pytest.raises(ObjectNotFoundError):
        store.size("runs/r1/done.json")
    assert list(store.list()) == ["runs/r1/metrics.jsonl"]
    store.delete("runs/r1/done.json")  # deleting a missing key is fine
    store.delete("never/there.bin")
    store.delete("runs/r1/metrics.jsonl")
    assert list(store.list()) == []


def test_overwrite_replaces_whole_object(store: Store):
    store.put_bytes("obj.bin", b"x" * 1000)
    store.put_bytes("obj.bin", b"short")
    assert store.get_bytes("obj.bin") == b"short"
    assert store.size("obj.bin") == 5
    assert list(store.list()) == ["obj.bin"]


def test_reopen_from_url_sees_same_objects(store: Store):
    store.put_bytes("k/v.txt", b"hello")
    again = open_store(store.url)
    assert type(again) is type(store) and again.url == store.url
    assert again.get_bytes("k/v.txt") == b"hello"
    clone = pickle.loads(pickle.dumps(store))  # e.g. handed to a DataLoader worker
    assert clone.get_bytes("k/v.txt") == b"hello"


# -- escaping keys ----------------------------------------------------------------------
def _operations(store: Store, tmp_path: Path):
    source = tmp_path / "src.bin"
    source.write_bytes(b"data")
    return {
        "put_bytes": lambda key: store.put_bytes(key, b"data"),
        "put_file": lambda key: store.put_file(key, source),
        "put_json": lambda key: store.put_json(key, {}),
        "open_read": lambda key: store.open_read(key),
        "get_bytes": lambda key: store.get_bytes(key),
        "get_file": lambda key: store.get_file(key, tmp_path / "out.bin"),
        "get_json": lambda key: store.get_json(key),
        "exists": lambda key: store.exists(key),
        "size": lambda key: store.size(key),
        "delete": lambda key: store.delete(key),
        "checksum": lambda key: store.checksum(key),
    }


@pytest.mark.parametrize(
    "operation",
    ["put_bytes", "put_file", "put_json", "open_read", "get_bytes", "get_file", "get_json", "exists", "size", "delete", "checksum"],
)
def test_escaping_keys_refused_on_every_operation(store: Store, tmp_path: Path, operation: str):
    store.put_bytes("a/b", b"keep")  # something a bad key might reach
    call = _operations(store, tmp_path)[operation]
    for key in [*ESCAPING_KEYS, None, b"bytes-key", 7]:
        with pytest.raises(InvalidKeyError) as info:
            call(key)
        if key:
            assert repr(key) in str(info.value)  # the message shows the offending key
    assert list(store.list()) == ["a/b"]  # nothing was written anywhere
    assert store.get_bytes("a/b") == b"keep"
    if isinstance(store, LocalStore):
        outside = store.root.parent
        assert sorted(p.name for p in outside.iterdir()) == ["src.bin", "store"]  # nothing escaped the root


def test_escaping_prefixes_refused_by_list(store: Store):
    for prefix in ESCAPING_PREFIXES:
        with pytest.raises(InvalidKeyError):
            list(store.list(prefix))


# -- atomicity --------------------------------------------------------------------------
def test_local_failing_writer_keeps_old_object_and_no_temp_file(local_store: LocalStore, tmp_path: Path, monkeypatch):
    local_store.put_bytes("shard/train-00000.tar", b"old complete object")
    source = tmp_path / "new.tar"
    source.write_bytes(random_bytes(4 * 1024 * 1024, seed=5))

    def copy_half_then_fail(src, dst, length=0):
        dst.write(src.read(1024 * 1024))  # a partial object is on disk at this point
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(store_module.shutil, "copyfileobj", copy_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        local_store.put_file("shard/train-00000.tar", source)
    with pytest.raises(FileNotFoundError):
        local_store.put_file("shard/train-00000.tar", tmp_path / "does-not-exist.tar")
    monkeypatch.undo()

    assert local_store.get_bytes("shard/train-00000.tar") == b"old complete object"
    assert list(local_store.list()) == ["shard/train-00000.tar"]
    on_disk = [Path(d, f).relative_to(local_store.root).as_posix() for d, _, fs in os.walk(local_store.root) for f in fs]
    assert on_disk == ["shard/train-00000.tar"]  # the temp files were removed, not just hidden


def test_local_in_flight_temp_file_not_listed(local_store: LocalStore):
    local_store.put_bytes("d/x.bin", b"x")
    (local_store.root / "d" / ".flatland-tmp-y.bin.abc123").write_bytes(b"half")  # another writer, mid-write
    assert list(local_store.list()) == ["d/x.bin"]
    assert list(local_store.list("d/")) == ["d/x.bin"]


# -- manifests ----------------------------------------------------------------------------
def _write_objects(store: Store) -> Manifest:
    manifest = Manifest(kind="meshes", spec_hash="abc123", metadata={"classes": 2})
    for cls in range(2):
        for inst in range(3):
            data = random_bytes(1000 + 17 * inst, seed=100 * cls + inst)
            entry = put_with_entry(store, f"meshes/ds/{cls:05d}/{inst}.glb", data, class_index=cls, instance=inst)
            manifest.upsert(entry)
    write_manifest(store, "meshes/ds/manifest.json", manifest)
    return manifest


def test_manifest_write_read_verify(store: Store):
    assert read_manifest(store, "meshes/ds/manifest.json") is None
    written = _write_objects(store)
    read = read_manifest(store, "meshes/ds/manifest.json")
    assert read is not None and read.kind == "meshes" and read.metadata == {"classes": 2}
    assert [e.key for e in read.entries] == sorted(e.key for e in written.entries)
    assert read.entries[4].class_index == 1 and read.entries[4].instance == 1  # extra fields survive
    assert read.updated  # stamped on write
    assert verify_manifest(store, read) == []
    for entry in read.entries:
        verify_entry(store, entry)
        assert entry_for(store, entry.key).sha256 == entry.sha256
        assert verify_bytes(entry, store.get_bytes(entry.key)) == store.get_bytes(entry.key)


def test_manifest_detects_same_size_corruption(store: Store):
    manifest = _write_objects(store)
    victim = manifest.entries[2]
    original = store.get_bytes(victim.key)
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01  # one bit, same size
    tamper(store, victim.key, bytes(flipped))
    problems = verify_manifest(store, manifest)
    assert len(problems) == 1 and victim.key in problems[0] and "sha256" in problems[0]
    with pytest.raises(IntegrityError, match="corrupted"):
        verify_entry(store, victim)
    with pytest.raises(IntegrityError):
        verify_bytes(victim, bytes(flipped))


def test_manifest_detects_overwrite_and_missing(store: Store):
    manifest = _write_objects(store)
    overwritten, missing = manifest.entries[0], manifest.entries[5]
    store.put_bytes(overwritten.key, b"different bytes entirely")  # through the store, unnoticed by the manifest
    store.delete(missing.key)
    problems = verify_manifest(store, manifest)
    assert len(problems) == 2
    assert overwritten.key in problems[0] and "size" in problems[0]
    assert missing.key in problems[1] and "missing" in problems[1]
    with pytest.raises(IntegrityError, match="missing"):
        verify_entry(store, missing)


def test_manifest_entry_rejects_bad_digest():
    with pytest.raises(ValueError):
        ManifestEntry(key="a", size=1, sha256="not-a-digest")
    with pytest.raises(ValueError):
        ManifestEntry(key="a", size=-1, sha256="0" * 64)


# -- open_store ------------------------------------------------------------------------------
def test_open_store_local_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    default = open_store(None)
    assert isinstance(default, LocalStore) and default.root == tmp_path / "flatland-data"
    assert open_store("").root == tmp_path / "flatland-data"
    assert open_store("rel/dir").root == tmp_path / "rel" / "dir"
    assert open_store(str(tmp_path / "abs")).root == tmp_path / "abs"
    by_url = open_store(f"file://{tmp_path / 'abs'}")
    assert by_url.root == tmp_path / "abs" and by_url.url == f"file://{tmp_path / 'abs'}"
    for bad in ("gs://bucket/x", "http://host/x"):
        with pytest.raises(ValueError, match="unsupported store URL"):
            open_store(bad)


def test_open_store_s3_url_forms(s3_bucket: str):
    from services.common.s3store import S3Store

    plain = open_store(f"s3://{s3_bucket}")
    assert isinstance(plain, S3Store) and plain.bucket == s3_bucket and plain.prefix == "" and plain.url == f"s3://{s3_bucket}"
    nested = open_store(f"s3://{s3_bucket}/exp/one")
    assert nested.prefix == "exp/one" and nested.url == f"s3://{s3_bucket}/exp/one"
    assert open_store(f"s3://{s3_bucket}/exp/one/").url == nested.url  # a trailing slash names the same store
    nested.put_bytes("k.txt", b"v")
    assert plain.get_bytes("exp/one/k.txt") == b"v"  # the prefix is a real key prefix in the bucket
    assert list(plain.list()) == ["exp/one/k.txt"] and list(nested.list()) == ["k.txt"]


def test_local_reserved_and_nested_keys(local_store):
    from services.common.errors import InvalidKeyError

    with pytest.raises(InvalidKeyError, match="reserved for in-flight writes"):
        local_store.put_bytes("d/.flatland-tmp-x", b"1")
    local_store.put_bytes("a/b", b"1")
    with pytest.raises(InvalidKeyError, match="'a/b' is already an object"):
        local_store.put_bytes("a/b/c", b"2")
    assert local_store.get_bytes("a/b") == b"1"
