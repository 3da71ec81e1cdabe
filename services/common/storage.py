"""The store's interface (:class:`Store`) and key rules, shared by every backend.

Backends: :class:`~services.common.store.LocalStore` (a directory) and
:class:`~services.common.s3store.S3Store` (S3-compatible); :func:`~services.common.store.open_store`
picks one from a URL. Kept apart from them so a backend can import the interface
without importing the module that chooses among backends.
"""

from __future__ import annotations

import abc
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from services.common.errors import InvalidKeyError, ObjectNotFoundError

_CHUNK = 1 << 20
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TMP_PREFIX = ".flatland-tmp-"  # in-flight atomic writes; never a valid key segment
#: Longest key segment: a file name in a local store (the temporary name of an atomic write
#: adds about 30 bytes to it, within the usual 255-byte limit).
MAX_SEGMENT_BYTES = 200
#: Longest key: S3's limit.
MAX_KEY_BYTES = 1024


def validate_key(key: str) -> str:
    """Return ``key`` unchanged if it is a safe store key, else raise :class:`InvalidKeyError`.

    Refused: empty keys, absolute paths, backslashes, ``.`` or ``..`` segments,
    empty segments (``a//b``, trailing ``/``), control characters, segments longer than
    :data:`MAX_SEGMENT_BYTES` and keys longer than :data:`MAX_KEY_BYTES` (UTF-8).
    """
    if not isinstance(key, str) or not key:
        raise InvalidKeyError(f"store key must be a non-empty string, got {key!r}")
    if _CONTROL.search(key):
        raise InvalidKeyError(f"store key {key!r} contains a control character")
    if key.startswith("/"):
        raise InvalidKeyError(f"store key {key!r} is absolute; keys are relative like 'meshes/x/manifest.json'")
    if "\\" in key:
        raise InvalidKeyError(f"store key {key!r} contains a backslash; use '/' between segments")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidKeyError(f"store key {key[:60]!r}... is longer than {MAX_KEY_BYTES} bytes (UTF-8), the most S3 allows")
    for segment in key.split("/"):
        if len(segment.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES:
            raise InvalidKeyError(
                f"store key {key[:60]!r}...: segment {segment[:20]!r}... is longer than {MAX_SEGMENT_BYTES} bytes "
                "(UTF-8), the most a file name may have"
            )
        if segment == "":
            raise InvalidKeyError(f"store key {key!r} has an empty segment")
        if segment in (".", ".."):
            raise InvalidKeyError(f"store key {key!r} contains a '{segment}' segment, which could escape the store")
        if segment.startswith(_TMP_PREFIX):
            raise InvalidKeyError(f"store key {key!r}: segments starting with {_TMP_PREFIX!r} are reserved for in-flight writes")
    return key


def validate_prefix(prefix: str) -> str:
    """Like :func:`validate_key` but allows the empty prefix and a trailing ``/``."""
    if prefix == "":
        return prefix
    validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_stream(stream: BinaryIO) -> tuple[int, str]:
    """(size, sha256 hex) of everything left in ``stream``."""
    digest = hashlib.sha256()
    size = 0
    while chunk := stream.read(_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


class Store(abc.ABC):
    """Object storage with atomic per-object writes."""

    #: A URL that reopens this store in another process (``open_store(store.url)``).
    url: str

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key`` atomically, replacing any earlier object."""

    @abc.abstractmethod
    def put_file(self, key: str, path: str | os.PathLike) -> None:
        """Upload the local file ``path`` to ``key`` atomically."""

    @abc.abstractmethod
    def open_read(self, key: str) -> BinaryIO:
        """A readable binary stream of the object (close it when done)."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def size(self, key: str) -> int:
        """Size in bytes; :class:`ObjectNotFoundError` if missing."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with ``prefix`` (a plain string prefix), in sorted order."""

    # Derived operations: backends may override for speed.
    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as stream:
            return stream.read()

    def get_file(self, key: str, path: str | os.PathLike) -> None:
        """Download ``key`` to the local file ``path`` (written atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, self.open_read(key) as stream:
                shutil.copyfileobj(stream, out, _CHUNK)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_json(self, key: str, obj) -> None:
        import json

        self.put_bytes(key, json.dumps(obj, indent=2, sort_keys=True).encode("utf-8"))

    def get_json(self, key: str):
        import json

        return json.loads(self.get_bytes(key))

    #: How many :meth:`read_range` calls a reader should keep in flight (1: the backend is local and fast).
    range_read_concurrency = 1

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """``length`` bytes of the object at ``offset`` (random access; backends override this with a ranged read)."""
        with self.open_read(key) as stream:
            skipped = 0
            while skipped < offset:
                chunk = stream.read(min(_CHUNK, offset - skipped))
                if not chunk:
                    break
                skipped += len(chunk)
            data = stream.read(length)
        if len(data) != length:
            raise ObjectNotFoundError(f"{key!r} has no bytes {offset}..{offset + length} (object too short)")
        return data

    def checksum(self, key: str) -> tuple[int, str]:
        """(size, sha256 hex) of the stored object, streamed."""
        with self.open_read(key) as stream:
            return sha256_stream(stream)
