"""Fixtures shared by every test directory: stores, and a real S3-compatible server on loopback."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.store import LocalStore

# Credentials of the throwaway loopback server (moto accepts any pair).
S3_TEST_ACCESS_KEY = "flatland-test-access"
S3_TEST_SECRET_KEY = "flatland-test-secret"
S3_TEST_REGION = "us-east-1"
# The smallest part size S3 allows, so multipart tests need only ~12 MiB objects.
S3_TEST_PART_SIZE = 5 * 1024 * 1024

_bucket_numbers = itertools.count()


@pytest.fixture
def local_store(tmp_path: Path) -> LocalStore:
    """A fresh :class:`LocalStore` in the test's temporary directory."""
    return LocalStore(tmp_path / "store")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Start moto's S3-compatible server on a free loopback port; yield its endpoint URL.

    The server runs in a thread of the test process and speaks real HTTP, so the
    minio client goes through its whole request path (signing, multipart, errors).
    """
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # port 0: the OS picks a free one
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point ``FLATLAND_S3_*`` and the AWS credential variables at the loopback server.

    Other credential sources are cleared so a developer's own environment cannot leak in.
    Returns the endpoint URL.
    """
    for var in ("MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "AWS_SESSION_TOKEN", "FLATLAND_S3_SECRET_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FLATLAND_S3_ENDPOINT", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_TEST_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_TEST_SECRET_KEY)
    monkeypatch.setenv("FLATLAND_S3_REGION", S3_TEST_REGION)
    return s3_server


@pytest.fixture
def s3_bucket(s3_env: str) -> Iterator[str]:
    """A new, empty bucket on the loopback server (removed with its objects afterwards)."""
    from minio import Minio

    client = Minio(
        s3_env.removeprefix("http://"),
        access_key=S3_TEST_ACCESS_KEY,
        secret_key=S3_TEST_SECRET_KEY,
        secure=False,
        region=S3_TEST_REGION,
    )
    bucket = f"flatland-test-{next(_bucket_numbers)}"
    client.make_bucket(bucket)
    yield bucket
    for obj in client.list_objects(bucket, recursive=True):
        client.remove_object(bucket, obj.object_name)
    client.remove_bucket(bucket)


@pytest.fixture
def s3_store(s3_bucket: str):
    """A fresh :class:`S3Store` on a new bucket, with a 5 MiB part size.

    The environment is set up too, so ``open_store(store.url)`` reopens the same store.
    """
    from services.common.s3store import S3Store

    return S3Store.from_url(f"s3://{s3_bucket}", part_size=S3_TEST_PART_SIZE)


@pytest.fixture
def serve_stage():
    """Start a stage's real server (the `flatland serve` bootstrap) on a free loopback port.

    ``channel = serve_stage("render", store)`` returns an open channel; servers and channels
    are stopped after the test.
    """
    import grpc

    from services.common.server import start_server

    started = []

    def serve(stage: str, store, **options):
        running = start_server(stage, store, port=0, metrics_port=None, **options)
        channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
        started.append((running, channel))
        return channel

    yield serve
    for running, channel in started:
        channel.close()
        running.stop(grace=1.0)
