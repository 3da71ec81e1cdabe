"""The store: one interface over a local directory and S3-compatible object storage.

Keys are ``/``-separated relative paths such as ``meshes/<dataset>/manifest.json``.
Every write is atomic per object: a reader sees the old object, the new one, or
nothing — never a partial one. Stages talk only to :class:`Store`; which backend is
behind it is a deployment choice (:func:`open_store`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from services.common.errors import InvalidKeyError, ObjectNotFoundError
from services.common.storage import (  # noqa: F401  (re-exported: the store's public names)
    _CHUNK, _TMP_PREFIX, Store, sha256_bytes, sha256_stream, validate_key, validate_prefix,
)

DEFAULT_LOCAL_ROOT = "./flatland-data"


class LocalStore(Store):
    """A directory on the local file system (the default: ``./flatland-data``)."""

    def __init__(self, root: str | os.PathLike = DEFAULT_LOCAL_ROOT):
        self.root = Path(root).resolve()
        if self.root.exists() and not self.root.is_dir():
            raise InvalidKeyError(f"store root {str(root)!r} exists and is not a directory; give a directory path")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidKeyError(f"cannot create the store directory {str(root)!r}: {exc.strerror or exc}") from None
        self.url = f"file://{self.root}"

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        path = self.root.joinpath(*validate_key(key).split("/"))
        # Keys cannot escape the root by name; a symlink inside it could point anywhere, so
        # refuse any key whose real location (links followed) is outside the store.
        real = path.resolve()
        if real != self.root and self.root not in real.parents:
            raise InvalidKeyError(f"store key {key!r} leads outside the store through a symbolic link (to {str(real)!r})")
        return path

    def _atomic_write(self, key: str, write) -> None:
        target = self._path(key)
        for rel in reversed(Path(key).parents[:-1]):
            parent = self.root / rel
            if parent.is_file():
                # S3 allows both "a/b" and "a/b/c"; a directory tree cannot, so say so plainly.
                raise InvalidKeyError(
                    f"store key {key!r}: {parent.relative_to(self.root).as_posix()!r} is already an object, "
                    "so it cannot also be a prefix of other keys in a local store"
                )
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f"{_TMP_PREFIX}{target.name}.")
        try:
            with os.fdopen(fd, "wb") as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        self._atomic_write(key, lambda out: out.write(data))

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        def copy(out):
            with open(path, "rb") as src:
                shutil.copyfileobj(src, out, _CHUNK)

        self._atomic_write(key, copy)

    def open_read(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            return open(path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(f"no object at key {key!r} in {self!r}") from None

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(f"no object at key {key!r} in {self!r}") from None
        try:
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        if len(data) != length:
            raise ObjectNotFoundError(f"{key!r} has no bytes {offset}..{offset + length} (object too short)")
        return data

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFoundError(f"no object at key {key!r} in {self!r}")
        return path.stat().st_size

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        # Tidy now-empty parent directories, never the root itself.
        parent = path.parent
        while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
            try:
                parent.rmdir()
            except OSError:  # a concurrent writer just put something there
                break
            parent = parent.parent

    def list(self, prefix: str = "") -> Iterator[str]:
        validate_prefix(prefix)
        # Walk only the deepest directory the prefix pins down.
        base_parts = prefix.split("/")[:-1]
        base = self.root.joinpath(*base_parts) if base_parts else self.root
        if not base.is_dir():
            return iter(())
        keys = []
        for dirpath, _dirnames, filenames in os.walk(base):
            for name in filenames:
                if name.startswith(_TMP_PREFIX):
                    continue  # an in-flight atomic write
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return iter(sorted(keys))


def open_store(url: str | None = None) -> Store:
    """Open a store from a URL.

    - ``None`` or ``""``: the local default ``./flatland-data``;
    - a path or ``file:///abs/path``: a local directory;
    - ``s3://bucket/optional/prefix``: S3-compatible storage. The endpoint comes from
      ``FLATLAND_S3_ENDPOINT`` (e.g. ``http://minio:9000``), credentials from
      ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` or files in the directory
      ``FLATLAND_S3_SECRET_DIR`` (a mounted Kubernetes Secret) — never from a spec.
    """
    if not url:
        return LocalStore(DEFAULT_LOCAL_ROOT)
    if url.startswith("s3://"):
        from services.common.s3store import S3Store

        return S3Store.from_url(url)
    if url.startswith("file://"):
        return LocalStore(url[len("file://"):])
    if "://" in url:
        raise ValueError(f"unsupported store URL {url!r}: use a directory path, file://PATH or s3://BUCKET/PREFIX")
    return LocalStore(url)

