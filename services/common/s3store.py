"""The S3 backend of the store, over the ``minio`` client.

Works with any S3-compatible endpoint (MinIO in the cluster, AWS S3, moto in the
tests). A store is a bucket plus an optional key prefix: ``s3://flatland/exp1``
keeps the object ``meshes/x/manifest.json`` at ``exp1/meshes/x/manifest.json`` in
the bucket ``flatland``.

Configuration never comes from a spec or a URL, only from the environment:

``FLATLAND_S3_ENDPOINT``
    ``http://minio:9000`` or ``https://s3.example.org``; the scheme decides TLS.
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (or ``MINIO_ACCESS_KEY`` / ``MINIO_SECRET_KEY``)
    Credentials. ``AWS_SESSION_TOKEN`` is passed on when set.
``FLATLAND_S3_SECRET_DIR``
    Else, a directory holding the files ``access_key`` and ``secret_key`` (or
    ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``): a mounted Kubernetes Secret.
``FLATLAND_S3_REGION``
    Optional; saves a location lookup per bucket.
``FLATLAND_S3_CONNECT_TIMEOUT`` / ``FLATLAND_S3_READ_TIMEOUT``
    Seconds to wait for a connection (default 10) and for each read from it (default 60),
    instead of minio's 300 s: a frozen endpoint fails a request in about a minute, not hours.
``FLATLAND_S3_RETRIES`` / ``FLATLAND_S3_BACKOFF``
    Retries of a request that timed out, lost its connection or got a 500/502/503/504
    (default 3), and the first back-off in seconds, doubling each time (default 0.5). Every
    retry is logged with the request and the reason.

Atomicity: an S3 PUT replaces an object atomically, and a multipart upload becomes
visible only when it completes (minio aborts it on failure), so readers never see
a partial object.
"""

from __future__ import annotations

import io
import logging
import mimetypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import certifi
import urllib3
import urllib3.exceptions
from minio import Minio
from minio.error import MinioException, S3Error
from minio.helpers import MIN_PART_SIZE, check_bucket_name

from services.common.errors import FlatlandError, ObjectNotFoundError
from services.common.storage import Store, validate_key, validate_prefix

#: Default multipart part size: objects larger than this upload in parts.
DEFAULT_PART_SIZE = 16 * 1024 * 1024
_READ_BUFFER = 1 << 20

log = logging.getLogger("flatland.store")

ENDPOINT_ENV = "FLATLAND_S3_ENDPOINT"
CONNECT_TIMEOUT_ENV = "FLATLAND_S3_CONNECT_TIMEOUT"
READ_TIMEOUT_ENV = "FLATLAND_S3_READ_TIMEOUT"
RETRIES_ENV = "FLATLAND_S3_RETRIES"
BACKOFF_ENV = "FLATLAND_S3_BACKOFF"
# (default, smallest, largest) of each setting.
_NETWORK_SETTINGS = {
    CONNECT_TIMEOUT_ENV: (10.0, 0.1, 600.0),
    READ_TIMEOUT_ENV: (60.0, 0.1, 3600.0),
    RETRIES_ENV: (3, 0, 20),
    BACKOFF_ENV: (0.5, 0.0, 60.0),
}
REGION_ENV = "FLATLAND_S3_REGION"
SECRET_DIR_ENV = "FLATLAND_S3_SECRET_DIR"
# (access key, secret key) environment variable pairs, in order of preference.
_CREDENTIAL_ENV_PAIRS = (("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), ("MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"))
# (access key, secret key) file names inside FLATLAND_S3_SECRET_DIR, in order of preference.
_CREDENTIAL_FILE_PAIRS = (("access_key", "secret_key"), ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))


class S3ConfigError(FlatlandError, ValueError):
    """The S3 store is not configured: a missing variable, a malformed endpoint or URL."""


class S3StoreError(FlatlandError):
    """The S3 endpoint failed or refused a request (unreachable, access denied, no bucket)."""


class _ResponseReader(io.RawIOBase):
    """A raw stream over a minio GET response whose ``close`` also frees the connection."""

    def __init__(self, response, key: str):
        self._response = response
        self._key = key

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            return self._response.readinto(buffer)
        except urllib3.exceptions.HTTPError as exc:
            raise S3StoreError(f"reading {self._key!r} from S3 failed: {exc}") from exc

    def close(self) -> None:
        if not self.closed:
            try:
                self._response.close()
                self._response.release_conn()
            finally:
                super().close()


class _LoggedRetry(urllib3.Retry):
    """urllib3's retry policy, saying at WARNING what is retried and why."""

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        new = super().increment(method, url, response, error, _pool, _stacktrace)  # raises when exhausted
        reason = f"{type(error).__name__}: {error}" if error is not None else f"HTTP {getattr(response, 'status', '?')}"
        host = f"{_pool.host}:{_pool.port}" if _pool is not None else "the S3 endpoint"
        log.warning("S3 %s %s at %s failed (%s); retry %d of %d in %.1f s", method, (url or "").split("?")[0], host,
                    reason, len(new.history), self.total_limit, new.get_backoff_time())
        return new

    @property
    def total_limit(self) -> int:
        return len(self.history) + (self.total if isinstance(self.total, int) else 0)


def network_settings(environ: os._Environ | dict[str, str] | None = None) -> dict[str, float]:
    """Timeouts and retries from the environment (see the module docstring), checked."""
    env = os.environ if environ is None else environ
    settings = {}
    for name, (default, low, high) in _NETWORK_SETTINGS.items():
        raw = env.get(name)
        if raw is None or raw.strip() == "":
            settings[name] = default
            continue
        kind = int if isinstance(default, int) else float
        try:
            value = kind(raw)
        except ValueError:
            raise S3ConfigError(f"{name}={raw!r}: must be {'an integer' if kind is int else 'a number of seconds'}") from None
        if not low <= value <= high:
            raise S3ConfigError(f"{name}={raw!r}: must lie in {low}..{high}")
        settings[name] = value
    return settings


def http_client(cert_check: bool = True, environ=None, maxsize: int = 16) -> urllib3.PoolManager:
    """minio's HTTP client with bounded timeouts and logged, bounded retries with back-off."""
    settings = network_settings(environ)
    retries = int(settings[RETRIES_ENV])
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=settings[CONNECT_TIMEOUT_ENV], read=settings[READ_TIMEOUT_ENV]),
        maxsize=maxsize,
        cert_reqs="CERT_REQUIRED" if cert_check else "CERT_NONE",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=_LoggedRetry(
            total=retries, connect=retries, read=retries, status=retries,
            backoff_factor=settings[BACKOFF_ENV], status_forcelist=[500, 502, 503, 504], raise_on_status=False,
        ),
    )


def _split_endpoint(endpoint: str) -> tuple[str, bool]:
    """``http://host:port`` → (``host:port``, secure=False); refuse anything else."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise S3ConfigError(
            f"S3 endpoint {endpoint!r} must look like http://HOST:PORT or https://HOST[:PORT] "
            f"(the scheme decides TLS); set {ENDPOINT_ENV}"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise S3ConfigError(f"S3 endpoint {endpoint!r} must not have a path or query; set {ENDPOINT_ENV} to scheme://host:port")
    if "@" in parts.netloc:
        raise S3ConfigError(
            f"S3 endpoint must not carry credentials; set {ENDPOINT_ENV} to scheme://host:port and the keys "
            f"in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or {SECRET_DIR_ENV}"
        )
    return parts.netloc, parts.scheme == "https"


def parse_s3_url(url: str) -> tuple[str, str]:
    """Split ``s3://bucket/optional/prefix`` into (bucket, prefix without trailing ``/``).

    Raises
    ------
    S3ConfigError
        For a URL that is not ``s3://``, names no bucket, carries credentials, a
        query, or a prefix that :func:`validate_key` refuses.
    """
    if not isinstance(url, str) or not url.startswith("s3://"):
        raise S3ConfigError(f"S3 store URL must start with 's3://', got {url!r}")
    rest = url[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    if "@" in bucket or "?" in rest or "#" in rest:
        raise S3ConfigError(
            f"S3 store URL {url!r} must be s3://BUCKET[/PREFIX] with no credentials or query; "
            f"credentials come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or {SECRET_DIR_ENV}"
        )
    if not bucket:
        raise S3ConfigError(f"S3 store URL {url!r} names no bucket; use s3://BUCKET[/PREFIX]")
    try:
        check_bucket_name(bucket, strict=True)  # today's S3 rules: 3-63 lower-case letters, digits, ".", "-"
    except ValueError as exc:
        raise S3ConfigError(f"S3 store URL {url!r}: bad bucket name: {exc}") from None
    if prefix.endswith("/"):
        prefix = prefix[:-1]  # "s3://b/runs/" names the same store as "s3://b/runs"
    if prefix:
        try:
            validate_key(prefix)
        except ValueError as exc:
            raise S3ConfigError(f"S3 store URL {url!r}: bad key prefix: {exc}") from None
    return bucket, prefix


def _read_secret_file(directory: Path, name: str) -> str | None:
    path = directory / name
    if not path.is_file():
        return None
    return path.read_text(encoding="utf-8").strip() or None


def credentials_from_env(environ: os._Environ | dict[str, str] | None = None) -> tuple[str, str, str | None]:
    """(access key, secret key, session token or None) from the environment or a secret directory.

    Raises
    ------
    S3ConfigError
        Naming the variables to set when no complete credential pair is found.
    """
    env = os.environ if environ is None else environ
    for access_var, secret_var in _CREDENTIAL_ENV_PAIRS:
        access, secret = env.get(access_var), env.get(secret_var)
        if access and secret:
            return access, secret, env.get("AWS_SESSION_TOKEN") or None
        if access or secret:
            missing = secret_var if access else access_var
            raise S3ConfigError(f"S3 credentials incomplete: {access_var if access else secret_var} is set but {missing} is not")
    secret_dir = env.get(SECRET_DIR_ENV)
    if secret_dir:
        directory = Path(secret_dir)
        if not directory.is_dir():
            raise S3ConfigError(f"{SECRET_DIR_ENV}={secret_dir!r} is not a directory (expected a mounted Secret)")
        for access_name, secret_name in _CREDENTIAL_FILE_PAIRS:
            access, secret = _read_secret_file(directory, access_name), _read_secret_file(directory, secret_name)
            if access and secret:
                return access, secret, _read_secret_file(directory, "session_token")
        expected = " or ".join(f"{a}+{s}" for a, s in _CREDENTIAL_FILE_PAIRS)
        raise S3ConfigError(f"{SECRET_DIR_ENV}={secret_dir!r} holds no credential files: expected non-empty {expected}")
    raise S3ConfigError(
        "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or MINIO_ACCESS_KEY and "
        f"MINIO_SECRET_KEY), or {SECRET_DIR_ENV} to a directory with files access_key and secret_key"
    )


class S3Store(Store):
    """A bucket (plus optional key prefix) on an S3-compatible endpoint.

    Parameters
    ----------
    bucket : str
        Bucket name.
    prefix : str
        Key prefix inside the bucket ('' for none); store keys live under ``prefix/``.
    endpoint : str
        ``http://host:port`` or ``https://host[:port]``.
    access_key, secret_key : str
        Credentials (use :meth:`from_url` to take them from the environment).
    session_token : str, optional
        Temporary-credential session token.
    region : str, optional
        Bucket region; when None minio looks it up once per bucket.
    part_size : int
        Objects larger than this upload as multipart in parts of this size
        (minio's minimum is 5 MiB).
    create_bucket : bool
        Create the bucket on first use if it does not exist (off by default: the
        cluster has a bucket-creating Job, and a typo should not make a new bucket).
    cert_check : bool
        Verify TLS certificates.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str,
        access_key: str,
        secret_key: str,
        session_token: str | None = None,
        region: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        create_bucket: bool = False,
        cert_check: bool = True,
    ):
        self.bucket, self.prefix = parse_s3_url(f"s3://{bucket}/{prefix}")
        if not isinstance(part_size, int) or part_size < MIN_PART_SIZE:
            raise S3ConfigError(f"part_size must be an integer >= {MIN_PART_SIZE} (5 MiB, the S3 minimum), got {part_size!r}")
        if not access_key or not secret_key:
            raise S3ConfigError("S3Store needs both access_key and secret_key")
        host, secure = _split_endpoint(endpoint)
        self.endpoint = endpoint.rstrip("/")
        self.region = region
        self.part_size = part_size
        self.create_bucket = create_bucket
        self.url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.client = Minio(
            host,
            access_key=access_key,
            secret_key=secret_key,
            session_token=session_token,
            secure=secure,
            region=region,
            cert_check=cert_check,
            http_client=http_client(cert_check, maxsize=max(10, self.range_read_concurrency)),
        )
        self._bucket_exists = False  # known to exist (cached after the first check)

    @classmethod
    def from_url(cls, url: str, *, part_size: int = DEFAULT_PART_SIZE, create_bucket: bool = False) -> S3Store:
        """Open ``s3://bucket[/prefix]`` with endpoint, credentials and region from the environment."""
        bucket, prefix = parse_s3_url(url)
        endpoint = os.environ.get(ENDPOINT_ENV)
        if not endpoint:
            raise S3ConfigError(f"no S3 endpoint for {url!r}: set {ENDPOINT_ENV}, e.g. http://127.0.0.1:9000")
        access_key, secret_key, session_token = credentials_from_env()
        return cls(
            bucket,
            prefix,
            endpoint=endpoint,
            access_key=access_key,
            secret_key=secret_key,
            session_token=session_token,
            region=os.environ.get(REGION_ENV) or None,
            part_size=part_size,
            create_bucket=create_bucket,
        )

    def __repr__(self) -> str:  # never shows credentials
        return f"S3Store({self.url!r} at {self.endpoint})"

    def __reduce__(self):
        # Pickled stores (e.g. sent to DataLoader workers) reopen from the URL and the
        # worker's environment, so credentials never end up in a pickle.
        return partial(S3Store.from_url, part_size=self.part_size, create_bucket=self.create_bucket), (self.url,)

    # -- helpers -------------------------------------------------------------------
    def object_name(self, key: str) -> str:
        """The object's name in the bucket for store key ``key`` (validated)."""
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _ensure_bucket(self) -> None:
        """Before a write: create the bucket if asked to and it is missing (checked once)."""
        if self.create_bucket and not self._bucket_exists:
            with self._errors(None):
                if not self.client.bucket_exists(self.bucket):
                    self.client.make_bucket(self.bucket, location=self.region or "us-east-1")
            self._bucket_exists = True

    def _endpoint_error(self, exc: Exception) -> S3StoreError:
        return S3StoreError(
            f"S3 endpoint {self.endpoint} failed for {self!r} (is {ENDPOINT_ENV} right and the server up?): {exc}"
        )

    def _missing_bucket_error(self) -> S3StoreError:
        return S3StoreError(
            f"bucket {self.bucket!r} does not exist at {self.endpoint}: create it (the cluster's "
            "bucket Job does) or open the store with create_bucket=True"
        )

    def _object_not_found(self, key: str) -> ObjectNotFoundError:
        """The error for a 404 on ``key``, once we know the 404 is not a missing bucket.

        A HEAD on an object in a missing bucket also answers 404 with no body, so
        without this check ``exists`` would quietly say False for every key of a
        mistyped bucket and a job would redo all its work before failing at the write.
        """
        if not self._bucket_exists:
            try:
                found = self.client.bucket_exists(self.bucket)
            except (MinioException, urllib3.exceptions.HTTPError) as exc:
                raise self._endpoint_error(exc) from exc
            if not found:
                raise self._missing_bucket_error()
            self._bucket_exists = True
        return ObjectNotFoundError(f"no object at key {key!r} in {self!r}")

    @contextmanager
    def _errors(self, key: str | None):
        """Translate minio/urllib3 failures into errors that name the key and what to do."""
        try:
            yield
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NotFound") and key is not None:
                raise self._object_not_found(key) from None
            if exc.code == "NoSuchBucket":
                raise self._missing_bucket_error() from None
            what = f"key {key!r}" if key is not None else "request"
            raise S3StoreError(f"S3 {what} in {self!r} failed: {exc.code}: {exc.message}") from exc
        except (MinioException, urllib3.exceptions.HTTPError) as exc:
            raise self._endpoint_error(exc) from exc

    def _content_type(self, key: str) -> str:
        return mimetypes.guess_type(key)[0] or "application/octet-stream"

    # -- Store interface -------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes) -> None:
        name = self.object_name(key)
        self._ensure_bucket()
        with self._errors(key):
            self.client.put_object(
                self.bucket, name, io.BytesIO(data), len(data),
                content_type=self._content_type(key), part_size=self.part_size,
            )

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        name = self.object_name(key)
        self._ensure_bucket()
        with self._errors(key):
            self.client.fput_object(
                self.bucket, name, os.fspath(path),
                content_type=self._content_type(key), part_size=self.part_size,
            )

    def open_read(self, key: str) -> BinaryIO:
        name = self.object_name(key)
        with self._errors(key):
            response = self.client.get_object(self.bucket, name)
        return io.BufferedReader(_ResponseReader(response, key), buffer_size=_READ_BUFFER)

    range_read_concurrency = 16  # ranged GETs are latency-bound: keep several in flight

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        name = self.object_name(key)
        with self._errors(key):
            response = self.client.get_object(self.bucket, name, offset=offset, length=length)
        try:
            data = response.read()
        except urllib3.exceptions.HTTPError as exc:
            raise S3StoreError(f"reading {key!r} from S3 failed: {exc}") from exc
        finally:
            response.close()
            response.release_conn()
        if len(data) != length:
            raise ObjectNotFoundError(f"{key!r} has no bytes {offset}..{offset + length} (object too short)")
        return data

    def _stat(self, key: str):
        name = self.object_name(key)
        with self._errors(key):
            return self.client.stat_object(self.bucket, name)

    def exists(self, key: str) -> bool:
        try:
            self._stat(key)
        except ObjectNotFoundError:
            return False
        return True

    def size(self, key: str) -> int:
        return int(self._stat(key).size)

    def etag(self, key: str) -> str:
        """The object's ETag (``<md5>-<parts>`` for a multipart upload)."""
        return self._stat(key).etag

    def delete(self, key: str) -> None:
        name = self.object_name(key)
        with self._errors(key):
            self.client.remove_object(self.bucket, name)  # S3 DELETE of a missing key succeeds

    def list(self, prefix: str = "") -> Iterator[str]:
        validate_prefix(prefix)
        full_prefix = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        with self._errors(None):
            # S3 lists in UTF-8 byte order, which equals Python's code-point order; sort anyway
            # because some S3-compatible servers do not promise it.
            keys = sorted(
                obj.object_name[strip:]
                for obj in self.client.list_objects(self.bucket, prefix=full_prefix or None, recursive=True)
                if not obj.is_dir and not obj.object_name.endswith("/")  # skip console "folder" markers
            )
        return iter(keys)
