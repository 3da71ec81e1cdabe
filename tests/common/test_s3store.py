"""What only the S3 backend has: multipart uploads, connection handling, configuration from the environment.

All of it runs against the real loopback S3 server from ``tests/conftest.py``.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import socket
from pathlib import Path

import numpy as np
import pytest

from services.common.errors import ObjectNotFoundError
from services.common.s3store import S3ConfigError, S3Store, S3StoreError, credentials_from_env, parse_s3_url
from services.common.store import open_store

MiB = 1024 * 1024
ACCESS, SECRET = "flatland-test-access", "flatland-test-secret"


def random_bytes(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size=n, dtype=np.uint8).tobytes()


@pytest.fixture
def no_s3_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment with no S3 configuration at all."""
    for var in (
        "FLATLAND_S3_ENDPOINT", "FLATLAND_S3_REGION", "FLATLAND_S3_SECRET_DIR", "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY",
    ):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


# -- multipart ---------------------------------------------------------------------------
def test_multipart_upload_from_file_and_bytes(s3_store: S3Store, tmp_path: Path):
    assert s3_store.part_size == 5 * MiB
    payload = random_bytes(12 * MiB + 123, seed=7)  # 3 parts: 5 + 5 + 2 MiB
    source = tmp_path / "big.tar"
    source.write_bytes(payload)

    s3_store.put_file("datasets/ds/train-00000.tar", source)
    s3_store.put_bytes("datasets/ds/train-00001.tar", payload)
    s3_store.put_bytes("datasets/ds/small.json", b"{}")

    for key in ("datasets/ds/train-00000.tar", "datasets/ds/train-00001.tar"):
        assert s3_store.etag(key).endswith("-3"), "expected a 3-part multipart upload"
        assert s3_store.size(key) == len(payload)
        assert s3_store.get_bytes(key) == payload
        assert s3_store.checksum(key) == (len(payload), hashlib.sha256(payload).hexdigest())
    assert "-" not in s3_store.etag("datasets/ds/small.json")  # a single PUT below the part size
    target = tmp_path / "back.tar"
    s3_store.get_file("datasets/ds/train-00000.tar", target)
    assert target.read_bytes() == payload


def test_failed_multipart_upload_keeps_old_object(s3_store: S3Store, monkeypatch: pytest.MonkeyPatch):
    s3_store.put_bytes("shard.tar", b"old complete object")
    upload_part = s3_store.client._upload_part

    def fail_on_second_part(bucket, name, data, headers, upload_id, part_number):
        if part_number == 2:
            raise ConnectionResetError("network dropped (simulated)")
        return upload_part(bucket, name, data, headers, upload_id, part_number)

    monkeypatch.setattr(s3_store.client, "_upload_part", fail_on_second_part)
    with pytest.raises(ConnectionResetError):
        s3_store.put_bytes("shard.tar", random_bytes(11 * MiB, seed=8))
    monkeypatch.undo()

    assert s3_store.get_bytes("shard.tar") == b"old complete object"  # never a half object
    assert list(s3_store.list()) == ["shard.tar"]
    pending = s3_store.client._list_multipart_uploads(s3_store.bucket)
    assert pending.uploads == []  # minio aborted the upload: no orphaned parts billed forever


def test_part_size_below_s3_minimum_refused(s3_env: str):
    with pytest.raises(S3ConfigError, match="part_size"):
        S3Store.from_url("s3://bucket", part_size=1 * MiB)


# -- streams and connections ----------------------------------------------------------------
def test_closing_a_stream_releases_its_connection(s3_store: S3Store, monkeypatch: pytest.MonkeyPatch):
    s3_store.put_bytes("blob.bin", random_bytes(3 * MiB, seed=9))
    responses = []
    get_object = s3_store.client.get_object

    def recording_get_object(*args, **kwargs):
        responses.append(get_object(*args, **kwargs))
        return responses[-1]

    monkeypatch.setattr(s3_store.client, "get_object", recording_get_object)
    with s3_store.open_read("blob.bin") as stream:
        assert len(stream.read(1000)) == 1000
        assert responses[0].connection is not None  # mid-read: the response holds a connection
    assert responses[0].closed
    assert responses[0].connection is None  # released back to (or dropped from) the pool


def test_missing_key_and_not_found_errors(s3_store: S3Store):
    with pytest.raises(ObjectNotFoundError, match="nothing/here"):
        s3_store.open_read("nothing/here")
    with pytest.raises(ObjectNotFoundError, match="nothing/here"):
        s3_store.size("nothing/here")


@pytest.mark.parametrize("region", ["us-east-1", None])
def test_missing_bucket_is_a_clear_error_or_created_on_request(s3_env: str, monkeypatch, region):
    if region is None:
        monkeypatch.delenv("FLATLAND_S3_REGION")  # minio then looks the region up first
    store = S3Store.from_url("s3://no-such-bucket-here")
    with pytest.raises(S3StoreError, match="no-such-bucket-here.*create_bucket=True"):
        store.put_bytes("a", b"x")
    # Reads fail loudly too: exists() saying False for a mistyped bucket would make a job redo everything.
    for read in (store.exists, store.get_bytes, store.size, lambda key: list(store.list(key))):
        with pytest.raises(S3StoreError, match="bucket 'no-such-bucket-here' does not exist"):
            read("a")

    created = S3Store.from_url("s3://made-on-request/p", create_bucket=True)
    created.put_bytes("a", b"x")
    assert created.get_bytes("a") == b"x"
    assert created.client.bucket_exists("made-on-request")
    created.delete("a")
    created.client.remove_bucket("made-on-request")


def test_prefixes_isolate_stores_in_one_bucket(s3_bucket: str):
    left, right = open_store(f"s3://{s3_bucket}/left"), open_store(f"s3://{s3_bucket}/left-over")
    left.put_bytes("x", b"L")
    right.put_bytes("x", b"R")
    assert left.get_bytes("x") == b"L" and right.get_bytes("x") == b"R"
    assert list(left.list()) == ["x"] and list(right.list()) == ["x"]  # "left" does not see "left-over/x"
    assert left.object_name("m/n") == "left/m/n"
    left.delete("x")
    assert right.exists("x")


# -- configuration ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://flatland", "flatland", ""),
        ("s3://flatland/", "flatland", ""),
        ("s3://flatland/exp", "flatland", "exp"),
        ("s3://flatland/exp/one/", "flatland", "exp/one"),
    ],
)
def test_parse_s3_url(url: str, bucket: str, prefix: str):
    assert parse_s3_url(url) == (bucket, prefix)


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("s3://", "names no bucket"),
        ("s3:///prefix", "names no bucket"),
        ("s3://user:secret@bucket/p", "no credentials"),
        ("s3://bucket/p?x=1", "no credentials or query"),
        ("s3://Bad_Bucket", "bad bucket name"),
        ("s3://bucket/../escape", "bad key prefix"),
        ("s3://bucket/a//b", "bad key prefix"),
        ("file:///tmp/x", "must start with 's3://'"),
    ],
)
def test_bad_s3_urls_refused(url: str, complaint: str):
    with pytest.raises(S3ConfigError, match=complaint):
        parse_s3_url(url)


def test_missing_endpoint_names_the_variable(no_s3_env):
    no_s3_env.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    no_s3_env.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    with pytest.raises(S3ConfigError, match="set FLATLAND_S3_ENDPOINT"):
        open_store("s3://bucket/x")


@pytest.mark.parametrize("endpoint", ["127.0.0.1:9000", "ftp://host:21", "http://host:9000/path", "http://key:pw@host:9000"])
def test_malformed_endpoint_refused(no_s3_env, endpoint: str):
    no_s3_env.setenv("FLATLAND_S3_ENDPOINT", endpoint)
    no_s3_env.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    no_s3_env.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    with pytest.raises(S3ConfigError, match="FLATLAND_S3_ENDPOINT"):
        open_store("s3://bucket")


def test_https_endpoint_means_tls(no_s3_env):
    store = S3Store("bucket", endpoint="https://s3.example.org", access_key=ACCESS, secret_key=SECRET, region="eu-west-1")
    assert store.client._base_url.is_https  # no request is made: construction is offline
    plain = S3Store("bucket", endpoint="http://127.0.0.1:9000", access_key=ACCESS, secret_key=SECRET)
    assert not plain.client._base_url.is_https


def test_missing_credentials_name_the_variables(no_s3_env):
    no_s3_env.setenv("FLATLAND_S3_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(S3ConfigError) as info:
        open_store("s3://bucket")
    message = str(info.value)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "FLATLAND_S3_SECRET_DIR"):
        assert var in message
    no_s3_env.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    with pytest.raises(S3ConfigError, match="AWS_SECRET_ACCESS_KEY is not"):
        open_store("s3://bucket")


def test_minio_variable_names_accepted(no_s3_env):
    no_s3_env.setenv("MINIO_ACCESS_KEY", "m-access")
    no_s3_env.setenv("MINIO_SECRET_KEY", "m-secret")
    assert credentials_from_env() == ("m-access", "m-secret", None)
    no_s3_env.setenv("AWS_ACCESS_KEY_ID", "a-access")  # AWS names win when both are set
    no_s3_env.setenv("AWS_SECRET_ACCESS_KEY", "a-secret")
    assert credentials_from_env() == ("a-access", "a-secret", None)


@pytest.mark.parametrize(("access_file", "secret_file"), [("access_key", "secret_key"), ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")])
def test_credentials_from_mounted_secret_dir(s3_bucket: str, no_s3_env, s3_server: str, tmp_path: Path, access_file, secret_file):
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    (secret_dir / access_file).write_text(ACCESS + "\n")  # Secrets written by hand often end in a newline
    (secret_dir / secret_file).write_text(SECRET + "\n")
    no_s3_env.setenv("FLATLAND_S3_ENDPOINT", s3_server)
    no_s3_env.setenv("FLATLAND_S3_SECRET_DIR", str(secret_dir))
    assert credentials_from_env() == (ACCESS, SECRET, None)
    store = open_store(f"s3://{s3_bucket}/from-secret")
    store.put_bytes("k", b"v")
    assert store.get_bytes("k") == b"v"


def test_secret_dir_without_credentials_is_a_clear_error(no_s3_env, tmp_path: Path):
    no_s3_env.setenv("FLATLAND_S3_ENDPOINT", "http://127.0.0.1:9")
    no_s3_env.setenv("FLATLAND_S3_SECRET_DIR", str(tmp_path))
    (tmp_path / "access_key").write_text("only-half")
    with pytest.raises(S3ConfigError, match="access_key\\+secret_key"):
        open_store("s3://bucket")
    no_s3_env.setenv("FLATLAND_S3_SECRET_DIR", str(tmp_path / "absent"))
    with pytest.raises(S3ConfigError, match="not a directory"):
        open_store("s3://bucket")


def test_credentials_never_shown_or_pickled(s3_store: S3Store):
    assert SECRET not in repr(s3_store) and ACCESS not in repr(s3_store)
    blob = pickle.dumps(s3_store)
    assert SECRET.encode() not in blob and ACCESS.encode() not in blob
    s3_store.put_bytes("k", b"v")
    assert pickle.loads(blob).get_bytes("k") == b"v"  # reopened from the URL and the environment


def test_unreachable_endpoint_is_a_clear_error(no_s3_env):
    # A port bound but not listening refuses connections; minio retries with back-off (~6 s), then gives up.
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        port = reserved.getsockname()[1]
        store = S3Store("bucket", endpoint=f"http://127.0.0.1:{port}", access_key=ACCESS, secret_key=SECRET, region="us-east-1")
        with pytest.raises(S3StoreError, match=f"127.0.0.1:{port}.*FLATLAND_S3_ENDPOINT"):
            store.exists("x")
