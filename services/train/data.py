"""Streaming WebDataset shards from the store into training batches.

Shards (``datasets/<dataset_id>/<split>-<shard:05d>.tar``, listed in
``datasets/<dataset_id>/manifest.json``) are read as streams through
``Store.open_read`` — a local file or an S3 object body — parsed on the fly (tar
headers by ``tarfile.TarInfo``) and grouped into samples by ``webdataset``'s
``group_by_keys``; nothing is downloaded first.

Integrity. Streamed shards are hashed as they pass; a sample read by random access
is checked against the SHA-256 of its image in the shard index, and a shard's index
must name the shard's manifest digest. A shard whose size or
SHA-256 disagrees with its manifest entry raises :class:`IntegrityError` naming the
shard (the size is checked before reading, the hash when the shard ends). A sample
that cannot be decoded inside an intact shard (bad PNG, missing ``cls``) is skipped and
counted; the stream fails once the skipped samples exceed ``max_corrupt_fraction`` of
the samples that worker expected.

Training order. Render writes shards in class order (a 2,000-sample shard of a
1,000-class dataset holds about two classes), so streaming shards, even through a
shuffle buffer, gives batches of a handful of classes. Training therefore reads each
epoch in one global random order over every sample of the split (or of every dataset
of a mix): :func:`epoch_order` draws a permutation of all usable samples from
``derive_rng(seed, "data", split, epoch)``, rank ``r`` of ``w`` takes every ``w``-th
sample of it and loader worker ``k`` of ``n`` every ``n``-th of those, so every batch
is a uniform sample of the whole split and a mix's batches follow its class
proportions, for any shard size, worker count and world size. Samples are read by
random access (:meth:`Store.read_range`: ``pread`` locally, ranged GETs on S3 with
several in flight) at the offsets of each shard's index (:func:`shard_index`: render's
``….index.json``, or, for shards without one, a single verified pass over the tar);
nothing but the indexes is held in memory.

Evaluation streams shards in tar order. Its work is a list of :class:`WorkUnit` (a
shard, or every ``stride``-th sample of a shard); :func:`split_units` deals units to
ranks and then to loader workers: whole shards when there are at least as many shards
as parts, otherwise every part reads each shard and keeps every n-th sample. Either
way the parts are disjoint and together cover every sample exactly once.

Determinism. The epoch order and augmentation draw from seeded generators
(``derive_rng(seed, "data", split, epoch, rank, worker)`` for augmentation); the
DataLoader returns worker batches in a fixed round-robin order, so an epoch's batches
are a function of (seed, epoch, rank, world size, workers).

Samples come out as ``{"image": (H, W, 3) uint8 tensor, "label": int, "key": str,
"corrupt": int}`` (``corrupt`` = samples skipped just before this one); normalisation
happens on the batch (:func:`to_model_input`), which is cheaper than per sample.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch.nn import functional as nn_functional
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.io import ImageReadMode
from torchvision.io import decode_image as decode_encoded
from webdataset.tariterators import group_by_keys

from services.common.errors import FlatlandError, IntegrityError, ObjectNotFoundError
from services.common.manifest import read_manifest
from services.common.seeds import derive_rng
from services.common.spec.train import AugmentSpec
from services.common.store import Store, open_store
from services.render.api import INDEXED_MEMBERS, RGB_MEMBERS, dataset_manifest_key, find_rgb, shard_index_key

#: ImageNet statistics, recorded in every checkpoint so users normalise the same way.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_SHARD_KEY = re.compile(r"^datasets/[^/]+/(?P<split>[a-z0-9-]+)-(?P<shard>\d{5})\.tar$")
#: Only these members of a sample are read; depth, segmentation etc. stream past unparsed.
_WANTED = (*RGB_MEMBERS, "cls")
#: ... and these when the run also needs each sample's label map (segmentation).
_WANTED_WITH_SEG = (*_WANTED, "seg.png")
#: Label-map pixels of classes a mix leaves out: cross-entropy and the metrics skip them.
IGNORE_INDEX = -100
#: Further members a stream can read per sample (``members=``): the depth map (decoded like a label map: its
#: 16-bit millimetre steps, cropped, resized and flipped with the image by nearest neighbour) and the record.
EXTRA_MEMBERS = INDEXED_MEMBERS


class EmptySplitError(FlatlandError):
    """A dataset split with no samples."""


@dataclass(frozen=True)
class ShardRef:
    """One shard as its manifest entry describes it."""

    key: str
    size: int
    sha256: str
    samples: int
    split: str
    source: int = 0  # index of the dataset in a mix (selects its label table)


@dataclass(frozen=True)
class WorkUnit:
    """Samples ``j`` of ``shard`` with ``j % stride == offset`` (in tar order)."""

    shard: ShardRef
    stride: int = 1
    offset: int = 0

    @property
    def samples(self) -> int:
        n = self.shard.samples
        return max(0, (n - self.offset + self.stride - 1) // self.stride)


def dataset_manifest(store: Store, dataset_id: str):
    """The dataset manifest; :class:`ObjectNotFoundError` naming it when not rendered yet."""
    manifest = read_manifest(store, dataset_manifest_key(dataset_id))
    if manifest is None:
        raise ObjectNotFoundError(
            f"dataset '{dataset_id}' is not rendered yet: no manifest at {dataset_manifest_key(dataset_id)} "
            f"in {store!r} (run the render stage first)"
        )
    return manifest


def dataset_shards(store: Store, dataset_id: str, split: str, *, source: int = 0) -> list[ShardRef]:
    """The finished shards of one split, in shard order.

    Raises
    ------
    ObjectNotFoundError
        No manifest yet.
    EmptySplitError
        The split has no shards or no samples (an empty dataset).
    """
    manifest = dataset_manifest(store, dataset_id)
    shards = []
    for entry in manifest.entries:
        extra = entry.model_extra or {}
        split_name = extra.get("split")
        if split_name is None:
            match = _SHARD_KEY.match(entry.key)
            split_name = match["split"] if match else None
        if split_name != split:
            continue
        shards.append(
            ShardRef(entry.key, entry.size, entry.sha256, int(extra.get("samples", 0)), split, source)
        )
    shards.sort(key=lambda s: s.key)
    if not shards or sum(s.samples for s in shards) == 0:
        raise EmptySplitError(
            f"dataset '{dataset_id}' has no '{split}' samples in {dataset_manifest_key(dataset_id)} "
            f"(splits listed: {manifest.metadata.get('splits', {})})"
        )
    return shards


def split_units(units: Sequence[WorkUnit], parts: int, part: int) -> list[WorkUnit]:
    """Part ``part`` of ``parts`` disjoint pieces of ``units`` that together cover them.

    Whole units are dealt round-robin when there are at least ``parts`` of them;
    otherwise every unit is thinned to every ``parts``-th of its samples.
    """
    if not 0 <= part < parts:
        raise ValueError(f"part {part} out of range for {parts} parts")
    if parts == 1:
        return list(units)
    if len(units) >= parts:
        return list(units[part::parts])
    return [replace(u, stride=u.stride * parts, offset=u.offset + u.stride * part) for u in units]


class _HashingReader(io.RawIOBase):
    """A read-only stream that hashes everything read through it."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self.digest = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._stream.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.digest.update(data)
        self.size += n
        return n

    def drain(self) -> None:
        while chunk := self._stream.read(1 << 20):
            self.digest.update(chunk)
            self.size += len(chunk)

    def close(self) -> None:
        self._stream.close()
        super().close()


def iter_shard_samples(store: Store, shard: ShardRef, wanted: tuple[str, ...] = _WANTED) -> Iterator[dict]:
    """Raw samples (``__key__``, the rgb member — ``rgb.png``, ``rgb.webp`` or ``rgb.jpg`` — and ``cls`` bytes) of one shard, verified as it streams.

    Raises :class:`IntegrityError` naming the shard when its size or checksum disagrees
    with the manifest, or when the tar itself cannot be parsed.
    """
    stored = store.size(shard.key)
    if stored != shard.size:
        raise IntegrityError(f"shard {shard.key}: {stored} bytes in the store, manifest says {shard.size} (corrupt or truncated)")
    reader = _HashingReader(store.open_read(shard.key))
    buffered = io.BufferedReader(reader, 1 << 20)
    try:
        try:
            yield from group_by_keys(_tar_members(buffered, shard.key, wanted))
        except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
            raise IntegrityError(f"shard {shard.key}: not a readable tar ({exc.args[0] if exc.args else exc})") from None
        buffered.read()  # the tar end blocks and padding count towards the checksum
        reader.drain()
        if reader.digest.hexdigest() != shard.sha256:
            raise IntegrityError(
                f"shard {shard.key}: sha256 {reader.digest.hexdigest()[:12]}…, manifest says {shard.sha256[:12]}… "
                "(the shard changed after it was listed; re-render it)"
            )
    finally:
        buffered.close()


@dataclass(frozen=True)
class ShardIndex:
    """Where each usable sample's image lies in one shard, in tar order."""

    keys: np.ndarray  # (n,) bytes: sample keys
    classes: np.ndarray  # (n,) int64: the class in the sample's ``cls``
    offsets: np.ndarray  # (n,) int64: where the rgb image's bytes start in the tar
    sizes: np.ndarray  # (n,) int64
    digests: np.ndarray  # (n,) bytes: the rgb image's sha256 (hex)
    unusable: int = 0  # samples without an image or a readable class (or a label map, for with_seg indexes)
    seg_offsets: np.ndarray | None = None  # (n,) int64: where seg.png's bytes start (indexes made with_seg only)
    seg_sizes: np.ndarray | None = None
    seg_digests: np.ndarray | None = None
    #: further members (:data:`EXTRA_MEMBERS`) -> (offsets, sizes, sha256 digests), for indexes made with ``members``
    members: dict | None = None

    @classmethod
    def from_rows(cls, rows: list, unusable: int = 0, *, with_seg: bool = False) -> ShardIndex:
        """From index rows ``[key, class, rgb offset, rgb size, rgb sha256(, seg offset, seg size, seg sha256)]``;
        ``with_seg`` keeps only the rows with a label map (the others count as unusable)."""
        if with_seg:
            kept = [r for r in rows if len(r) >= 8]
            unusable, rows = unusable + len(rows) - len(kept), kept
        index = cls(np.array([r[0] for r in rows], dtype="S"), np.array([r[1] for r in rows], dtype=np.int64),
                    np.array([r[2] for r in rows], dtype=np.int64), np.array([r[3] for r in rows], dtype=np.int64),
                    np.array([r[4] for r in rows], dtype="S64"), unusable)
        if with_seg:
            index = replace(index, seg_offsets=np.array([r[5] for r in rows], dtype=np.int64),
                            seg_sizes=np.array([r[6] for r in rows], dtype=np.int64),
                            seg_digests=np.array([r[7] for r in rows], dtype="S64"))
        return index


_INDEXES: dict[tuple, ShardIndex] = {}  # per process: (store, shard, sha256, with_seg, members) -> index


def shard_index(store: Store, shard: ShardRef, *, with_seg: bool = False, members: Sequence[str] = ()) -> ShardIndex:
    """The shard's sample index: render's ``….index.json`` when it names this shard's digest
    (and, ``with_seg``, lists the label maps' offsets too), otherwise one pass over the tar
    (checksum verified, like streaming). Cached per process.

    ``members`` (of :data:`EXTRA_MEMBERS`) also locates those members of every sample, from the
    index's ``members`` table (shards indexed before it existed: one pass over the tar); samples
    without all of them count as unusable.

    Raises :class:`IntegrityError` naming the shard when its size disagrees with the manifest.
    """
    stored = store.size(shard.key)
    if stored != shard.size:
        raise IntegrityError(f"shard {shard.key}: {stored} bytes in the store, manifest says {shard.size} (corrupt or truncated)")
    members = tuple(members)
    unknown = [m for m in members if m not in EXTRA_MEMBERS]
    if unknown:
        raise ValueError(f"members: unknown sample members {unknown}; known: {list(EXTRA_MEMBERS)}")
    cache_key = (store.url, shard.key, shard.sha256, with_seg, members)
    if cache_key not in _INDEXES:
        try:
            document = store.get_json(shard_index_key(shard.key))
        except (ObjectNotFoundError, ValueError):
            document = None
        rows = document.get("samples") if isinstance(document, dict) else None
        usable = (isinstance(document, dict) and document.get("format") == 1 and document.get("sha256") == shard.sha256
                  # an index written before label maps were indexed: no seg columns at all
                  and not (with_seg and rows and not any(len(r) >= 8 for r in rows)))
        table = document.get("members") if usable else None
        usable = usable and (not members or (isinstance(table, dict) and all(
            isinstance(table.get(m), list) and len(table[m]) == len(rows) for m in members)))
        if usable:
            _INDEXES[cache_key] = _index_from_document(rows, table, shard.samples, with_seg, members)
        else:
            _INDEXES[cache_key] = _scan_index(store, shard, with_seg=with_seg, members=members)
    return _INDEXES[cache_key]


def _index_from_document(rows: list, table: dict | None, samples: int, with_seg: bool,
                         members: tuple[str, ...]) -> ShardIndex:
    """A :class:`ShardIndex` from render's index rows and, for ``members``, its ``members`` table (rows lacking one
    of them count as unusable, as in :func:`_scan_index`)."""
    extra = [[table[m][i] for m in members] for i in range(len(rows))] if members else [[] for _ in rows]
    kept = [(row, further) for row, further in zip(rows, extra) if all(e is not None for e in further)]
    unusable = max(0, samples - len(rows)) + len(rows) - len(kept)
    index = ShardIndex.from_rows([row for row, _ in kept], unusable=unusable, with_seg=with_seg)
    if members:
        if with_seg:
            kept = [(row, further) for row, further in kept if len(row) >= 8]  # as from_rows keeps them
        index = replace(index, members={name: (np.array([f[p][0] for _, f in kept], dtype=np.int64),
                                               np.array([f[p][1] for _, f in kept], dtype=np.int64),
                                               np.array([f[p][2] for _, f in kept], dtype="S64"))
                                        for p, name in enumerate(members)})
    return index


def _scan_index(store: Store, shard: ShardRef, *, with_seg: bool = False, members: tuple[str, ...] = ()) -> ShardIndex:
    """Index a shard by reading it once (for shards rendered before indexes, or label-map indexes, existed;
    and for indexes of further ``members``)."""
    reader = _HashingReader(store.open_read(shard.key))
    buffered = io.BufferedReader(reader, 1 << 20)
    samples: dict[str, dict] = {}
    try:
        try:
            for member in _tar_members(buffered, shard.key, (*(_WANTED_WITH_SEG if with_seg else _WANTED), *members)):
                key, _, extension = member["fname"].partition(".")
                samples.setdefault(key, {})[extension] = member
        except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
            raise IntegrityError(f"shard {shard.key}: not a readable tar ({exc.args[0] if exc.args else exc})") from None
        buffered.read()
        reader.drain()
    finally:
        buffered.close()
    if reader.digest.hexdigest() != shard.sha256:
        raise IntegrityError(
            f"shard {shard.key}: sha256 {reader.digest.hexdigest()[:12]}…, manifest says {shard.sha256[:12]}… "
            "(the shard changed after it was listed; re-render it)")
    rows, extra, unusable = [], [], 0
    for key, found in samples.items():
        try:
            cls = int(found["cls"]["data"].decode("ascii").strip())
            rgb = found[find_rgb(found) or "rgb.png"]  # KeyError: no image
            further = [found[m] for m in members]  # KeyError: a member the caller needs is missing
        except (KeyError, ValueError, UnicodeDecodeError):
            unusable += 1
            continue
        row = [key, cls, rgb["offset"], len(rgb["data"]), hashlib.sha256(rgb["data"]).hexdigest()]
        if "seg.png" in found:
            seg = found["seg.png"]
            row += [seg["offset"], len(seg["data"]), hashlib.sha256(seg["data"]).hexdigest()]
        elif with_seg:
            unusable += 1
            continue
        rows.append(row)
        extra.append([(m["offset"], len(m["data"]), hashlib.sha256(m["data"]).hexdigest()) for m in further])
    index = ShardIndex.from_rows(rows, unusable, with_seg=with_seg)
    if members:
        table = {}
        for position, name in enumerate(members):
            table[name] = (np.array([e[position][0] for e in extra], dtype=np.int64),
                           np.array([e[position][1] for e in extra], dtype=np.int64),
                           np.array([e[position][2] for e in extra], dtype="S64"))
        index = replace(index, members=table)
    return index


@dataclass(frozen=True)
class Folds:
    """Class-stratified cross-validation folds of a split: the samples of ``fold`` of ``folds``
    (``held_out=True``) or of all the others, after keeping ``fraction`` of every class (seeded)."""

    folds: int
    fold: int
    held_out: bool
    seed: int = 0
    fraction: float = 1.0

    def select(self, rows: np.ndarray) -> np.ndarray:
        """The subset of ``(n, 3)`` rows (shard, position, label) in this selection, in the given order."""
        if len(rows) == 0:
            return rows
        rng = derive_rng(self.seed, "folds")
        shuffled = rng.permutation(len(rows))
        by_label = shuffled[np.argsort(rows[shuffled, 2], kind="stable")]  # each label's rows, shuffled
        labels = rows[by_label, 2]
        starts = np.r_[0, np.flatnonzero(np.diff(labels)) + 1]
        counts = np.diff(np.r_[starts, len(labels)])
        rank_in_label = np.arange(len(labels)) - np.repeat(starts, counts)
        kept = rank_in_label < np.ceil(self.fraction * np.repeat(counts, counts))
        fold = rank_in_label % self.folds
        chosen = by_label[kept & ((fold == self.fold) == self.held_out)]
        return rows[np.sort(chosen)]


def epoch_order(indexes: Sequence[ShardIndex], sources: Sequence[int], label_tables: Sequence[np.ndarray], *,
                seed: int, split: str, epoch: int, rank: int = 0, world_size: int = 1,
                folds: Folds | None = None, shuffle: bool = True) -> np.ndarray:
    """Rank ``rank``'s samples of an epoch, in training order: ``(n, 3)`` int64 rows of
    (shard number, position in its index, label).

    One permutation of every usable sample of every shard (classes left out of a mix
    dropped) from ``derive_rng(seed, "data", split, epoch)``, the same on every rank;
    rank ``r`` takes rows ``r, r + w, r + 2w, …``. Loader workers split a rank's rows
    the same way, so every batch is a uniform draw from the whole split.
    """
    parts = []
    for number, (index, source) in enumerate(zip(indexes, sources)):
        table = label_tables[source]
        classes = index.classes
        labels = np.full(len(classes), -1, dtype=np.int64)
        known = (classes >= 0) & (classes < len(table))
        labels[known] = table[classes[known]]
        keep = np.flatnonzero(labels >= 0)
        parts.append(np.stack([np.full(len(keep), number), keep, labels[keep]], axis=1))
    rows = np.concatenate(parts) if parts else np.zeros((0, 3), dtype=np.int64)
    if folds is not None:
        rows = folds.select(rows)
    if not shuffle:  # evaluation: index order
        return rows[rank::world_size]
    order = derive_rng(seed, "data", split, epoch).permutation(len(rows))
    return rows[order[rank::world_size]]


def _prefetched(fetch: Callable, items: Iterable, depth: int) -> Iterator:
    """``fetch(item)`` for each item, in order, with up to ``depth`` calls in flight (1: plain loop)."""
    if depth <= 1:
        for item in items:
            yield item, fetch(item)
        return
    pending = []
    with ThreadPoolExecutor(depth) as pool:
        for item in items:
            pending.append((item, pool.submit(fetch, item)))
            if len(pending) >= 2 * depth:
                first, future = pending.pop(0)
                yield first, future.result()
        for item, future in pending:
            yield item, future.result()


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise tarfile.ReadError(f"unexpected end of data ({len(data)} of {size} bytes)")
    return data


def _tar_members(stream: BinaryIO, url: str, wanted: tuple[str, ...] = _WANTED) -> Iterator[dict]:
    """``{"fname", "data", "__url__"}`` per wanted member, for webdataset's ``group_by_keys``.

    A sequential tar reader: headers are parsed by ``tarfile.TarInfo.frombuf`` (checksum
    verified; ustar, GNU long names and pax ``path``/``size`` records understood), and
    members training does not use (depth, segmentation, ...) are read past in one call
    each. ``tarfile``'s own stream mode re-slices its buffer on every small read, which
    made tar parsing cost more than PNG decoding.
    """
    long_name: str | None = None
    pax: dict[str, str] = {}
    position = 0  # bytes of the tar consumed so far
    while True:
        header = stream.read(tarfile.BLOCKSIZE)
        if not header or header == tarfile.NUL * tarfile.BLOCKSIZE:
            return  # end of archive
        if len(header) != tarfile.BLOCKSIZE:
            raise tarfile.ReadError("truncated header block")
        info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        size = int(pax.get("size", info.size))
        offset = position + tarfile.BLOCKSIZE
        padded = -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        data = _read_exact(stream, padded)[:size] if size else b""
        position = offset + padded
        if info.type == tarfile.XHDTYPE:  # pax extended header for the next member
            pax = dict(_pax_records(data))
            continue
        if info.type == tarfile.XGLTYPE:  # pax global header: nothing a sample needs
            continue
        if info.type == tarfile.GNUTYPE_LONGNAME:
            long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            continue
        name = pax.get("path") or long_name or info.name
        long_name, pax = None, {}
        if info.isreg() and name.endswith(wanted):
            yield {"fname": name, "data": data, "__url__": url, "offset": offset}


def _pax_records(data: bytes) -> Iterator[tuple[str, str]]:
    """``key=value`` records of a pax header (each ``"<length> <key>=<value>\\n"``)."""
    position = 0
    while position < len(data):
        space = data.index(b" ", position)
        length = int(data[position:space])
        key, _, value = data[space + 1:position + length - 1].partition(b"=")
        yield key.decode("utf-8"), value.decode("utf-8", "surrogateescape")
        position += length


def random_resized_crop_box(
    width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box ``(left, top, right, bottom)``, drawn from ``rng``."""
    area = width * height
    log_ratio = np.log(ratio)
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    # Fallback: the largest central crop within the ratio range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def decode_image(
    png: bytes, size: int, augment: AugmentSpec | None, rng: np.random.Generator
) -> torch.Tensor:
    """Decode, (randomly crop and flip when ``augment`` is given,) resize to ``size``.

    libpng decoding (torchvision.io) and torch's uint8 bilinear resampling on a
    channels-last tensor (antialiased when shrinking, as PIL does) are about twice as
    fast as PIL's for these images; see benchmarks/loader.py.

    Returns
    -------
    (size, size, 3) uint8 tensor
    """
    return decode_pair(png, None, size, augment, rng)[0]


def decode_label_map(png: bytes) -> torch.Tensor:
    """A ``seg.png`` (8- or 16-bit greyscale PNG) as an (H, W) int64 tensor of its values."""
    labels = decode_encoded(torch.frombuffer(bytearray(png), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED)
    if labels.shape[0] != 1:
        raise ValueError(f"label map has {labels.shape[0]} channels, expected 1 (a greyscale seg.png)")
    return labels[0].to(torch.int64)


def decode_pair(
    png: bytes, seg_png: bytes | None, size: int, augment: AugmentSpec | None, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`decode_image`, and with ``seg_png`` its label map under the same crop, resize and flip
    (nearest neighbour, so labels stay labels): ((size, size, 3) uint8, (size, size) int64 or None).
    """
    image, maps, _ = decode_views(png, {} if seg_png is None else {"seg": seg_png}, size, augment, rng)
    return image, maps.get("seg")


def decode_views(
    png: bytes, maps: dict[str, bytes | torch.Tensor], size: int, augment: AugmentSpec | None, rng: np.random.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """:func:`decode_image` with its integer maps (label maps, 16-bit depth steps: greyscale PNGs) under the same
    crop, resize and flip (nearest neighbour), and where each output pixel comes from. A map may also be
    given decoded, as an (H, W) int64 tensor.

    Returns ``((size, size, 3) uint8 image, {name: (size, size) int64 map}, view)``; ``view`` is the (2, 3)
    float64 affine map from continuous output pixel coordinates (x right, y down, pixel centres at
    ``i + 0.5``) to those of the stored image: a camera ray through output pixel ``p`` is the stored
    image's ray through ``view @ [p, 1]``, so crops, resizes and flips keep image, depth and rays consistent.
    """
    # PNG, WebP or JPEG (the render stage's rgb_format), told apart by their first bytes
    image = decode_encoded(torch.frombuffer(bytearray(png), dtype=torch.uint8), mode=ImageReadMode.RGB)  # (3, H, W)
    height, width = image.shape[1:]
    decoded: dict[str, torch.Tensor] = {}
    for name, data in maps.items():
        decoded[name] = data if isinstance(data, torch.Tensor) else decode_label_map(data)
        if tuple(decoded[name].shape) != (height, width):
            kind = "label map" if name == "seg" else f"{name} map"
            raise ValueError(f"{kind} is {tuple(decoded[name].shape)}, its image {(height, width)}")
    # source = (x0 + sx * u, y0 + sy * v) for a pixel (u, v) of the current image
    x0, y0, sx, sy = 0.0, 0.0, 1.0, 1.0
    if augment is not None and augment.random_resized_crop:
        left, top, right, bottom = random_resized_crop_box(width, height, augment.crop_scale, augment.crop_ratio, rng)
        image = image[:, top:bottom, left:right]
        decoded = {k: v[top:bottom, left:right] for k, v in decoded.items()}
        x0, y0 = float(left), float(top)
    elif augment is not None and augment.random_crop:
        if min(height, width) < size:  # too small to crop: scale up first (FractalDB's images are larger)
            scale = size / min(height, width)
            new_height, new_width = max(size, round(height * scale)), max(size, round(width * scale))
            sx, sy = width / new_width, height / new_height
            height, width = new_height, new_width
            image = nn_functional.interpolate(image[None].float(), size=(height, width), mode="bilinear",
                                              align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
            decoded = {k: _resize_labels(v, height, width) for k, v in decoded.items()}
        top, left = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
        image = image[:, top:top + size, left:left + size]
        decoded = {k: v[top:top + size, left:left + size] for k, v in decoded.items()}
        x0, y0 = x0 + sx * left, y0 + sy * top
    crop_height, crop_width = image.shape[1:]
    if image.shape[1:] != (size, size):
        batch = image[None].contiguous(memory_format=torch.channels_last)
        image = nn_functional.interpolate(batch, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    sx, sy = sx * crop_width / size, sy * crop_height / size
    decoded = {k: v if tuple(v.shape) == (size, size) else _resize_labels(v, size, size) for k, v in decoded.items()}
    flip = False
    if augment is not None and augment.horizontal_flip and rng.random() < 0.5:
        image = image.flip(2)
        decoded = {k: v.flip(1) for k, v in decoded.items()}
        flip = True
    view = torch.tensor([[-sx if flip else sx, 0.0, x0 + (sx * size if flip else 0.0)], [0.0, sy, y0]],
                        dtype=torch.float64)
    # For a channels-last result this permute is already contiguous (no copy).
    return image.permute(1, 2, 0).contiguous(), {k: v.contiguous() for k, v in decoded.items()}, view


def _resize_labels(labels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Nearest-neighbour resize of an (H, W) int64 label map ("nearest-exact": pixel centres, as PIL's NEAREST)."""
    # float32 holds every uint16 label exactly
    resized = nn_functional.interpolate(labels[None, None].float(), size=(height, width), mode="nearest-exact")
    return resized[0, 0].to(torch.int64)


class ShardStream(IterableDataset):
    """One rank's share of a split, as decoded (and for training, augmented) samples.

    Parameters
    ----------
    store_url : str
        URL of the store (reopened in each worker process).
    shards : list of ShardRef
        All shards of the split (all ranks); the rank's share is taken here.
    label_tables : list of (n_classes,) int array
        Per source dataset: new label of each original class, -1 for classes left
        out of a mix (those samples are dropped).
    input_size : int
    augment : AugmentSpec or None
        None: evaluation (plain resize, no shuffling).
    shuffle_buffer : int
        Ignored: kept so callers and older specs still work (training reads a global random order).
    seed, epoch, rank, world_size, max_corrupt_fraction : see module docs.
    folds : Folds, optional
        Only these cross-validation folds of the split (read by random access; shuffled
        when ``augment`` is given, in index order otherwise).
    with_seg : bool
        Also read each sample's label map (``seg.png``: 0 background, class + 1 on objects) and
        yield it as ``"seg"``, an (input_size, input_size) int64 tensor under the image's crop,
        resize and flip, its classes renumbered by the label table (0 stays background, classes a
        mix leaves out become :data:`IGNORE_INDEX`). Samples without one count as corrupt.
    members : sequence of str
        Further members of :data:`EXTRA_MEMBERS` to read: ``depth.png`` is yielded as ``"depth"``, an
        (input_size, input_size) int64 map of its stored millimetre steps (0: no surface) under the image's
        crop, resize and flip (nearest neighbour); ``json`` as ``"record"``, the sample's record text. With
        any of them each sample also carries ``"view"`` (see :func:`decode_views`). Samples without them
        count as corrupt.

    Training streams (``augment`` given) index every shard when created (render's indexes
    or one pass over each shard; cached per process) and read samples by random access in
    :func:`epoch_order`; evaluation streams read the rank's shards in tar order.
    """

    def __init__(
        self,
        store_url: str,
        shards: Sequence[ShardRef],
        label_tables: Sequence[np.ndarray],
        *,
        input_size: int,
        augment: AugmentSpec | None,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        max_corrupt_fraction: float = 0.01,
        folds: Folds | None = None,
        with_seg: bool = False,
        members: Sequence[str] = (),
    ):
        super().__init__()
        self.with_seg = with_seg
        self.members = tuple(members)
        unknown = [m for m in self.members if m not in EXTRA_MEMBERS]
        if unknown:
            raise ValueError(f"members: unknown sample members {unknown}; known: {list(EXTRA_MEMBERS)}")
        self.store_url = store_url
        self.shards = list(shards)
        self.units = split_units([WorkUnit(s) for s in shards], world_size, rank)
        self.label_tables = [np.asarray(t, dtype=np.int64) for t in label_tables]
        # label-map value (original class + 1, 0 background) -> target (new class + 1, 0, or IGNORE_INDEX)
        self.seg_tables = [torch.from_numpy(np.concatenate([[0], np.where(t >= 0, t + 1, IGNORE_INDEX)]))
                           for t in self.label_tables]
        self.input_size = input_size
        self.augment = augment
        self.seed = seed
        self.epoch = epoch
        self.rank = rank
        self.max_corrupt_fraction = max_corrupt_fraction
        self.split = shards[0].split if shards else "?"
        self.world_size = world_size
        self.random_access = augment is not None or folds is not None
        if self.random_access:  # training (a global random order) or a cross-validation fold
            store = open_store(store_url)
            self.indexes = [shard_index(store, s, with_seg=with_seg, members=self.members) for s in self.shards]
            self.order = epoch_order(self.indexes, [s.source for s in self.shards], self.label_tables, seed=seed,
                                     split=self.split, epoch=epoch, rank=rank, world_size=world_size, folds=folds,
                                     shuffle=augment is not None)

    def _samples(self, store: Store, units: list[WorkUnit], allowed: float) -> Iterator[tuple[dict, int]]:
        """(raw sample, label) for the worker's units; counts and skips bad ones."""
        for unit in units:
            table = self.label_tables[unit.shard.source]
            wanted = (*(_WANTED_WITH_SEG if self.with_seg else _WANTED), *self.members)
            for index, sample in enumerate(iter_shard_samples(store, unit.shard, wanted)):
                if index % unit.stride != unit.offset:
                    continue
                try:
                    original = int(sample["cls"].decode("ascii").strip())
                    if find_rgb(sample) is None:
                        raise KeyError("no rgb image (" + ", ".join(RGB_MEMBERS) + ")")
                    if not 0 <= original < len(table):
                        raise ValueError(f"class {original} outside 0..{len(table) - 1}")
                    if self.with_seg and "seg.png" not in sample:
                        raise KeyError("no label map (seg.png)")
                    for member in self.members:
                        if member not in sample:
                            raise KeyError(f"no {member}")
                except (KeyError, ValueError, UnicodeDecodeError) as exc:
                    self._count_corrupt(sample, exc, allowed)
                    continue
                label = int(table[original])
                if label >= 0:
                    sample["__source__"] = unit.shard.source  # selects its label-map table
                    yield sample, label

    def _count_corrupt(self, sample: dict, exc: Exception, allowed: float) -> None:
        self.corrupt += 1
        if self.corrupt > allowed:
            raise IntegrityError(
                f"{self.corrupt} corrupt samples in split '{self.split}' (last: {sample.get('__key__')} in "
                f"{sample.get('__url__')}: {exc}), more than max_corrupt_fraction={self.max_corrupt_fraction}"
            )

    def _random_access(self, worker: int, workers: int, rng: np.random.Generator) -> Iterator[dict]:
        """The worker's share of the epoch order, read sample by sample."""
        store = open_store(self.store_url)
        rows = self.order[worker::workers]
        # samples an index could not use (no image, bad class) count against this worker's share
        part, parts = self.rank * workers + worker, self.world_size * workers
        pending = sum(index.unusable for number, index in enumerate(self.indexes) if number % parts == part)
        allowed = self.max_corrupt_fraction * max(len(rows), 1)
        self.corrupt = pending
        if self.corrupt > allowed:
            raise IntegrityError(f"{self.corrupt} corrupt samples in split '{self.split}' (samples without an image "
                                 f"or class), more than max_corrupt_fraction={self.max_corrupt_fraction}")

        def fetch(row) -> tuple[bytes, bytes | None, dict[str, bytes]]:
            shard, index = self.shards[row[0]], self.indexes[row[0]]
            data = store.read_range(shard.key, int(index.offsets[row[1]]), int(index.sizes[row[1]]))
            further = {}
            for name in self.members:
                offsets, sizes, digests = index.members[name]
                further[name] = store.read_range(shard.key, int(offsets[row[1]]), int(sizes[row[1]]))
                if hashlib.sha256(further[name]).hexdigest().encode() != digests[row[1]]:
                    raise IntegrityError(f"shard {shard.key}: sample {index.keys[row[1]].decode()}: its {name} does "
                                         "not match its sha256 in the shard index (the shard changed after it was "
                                         "indexed; re-render it)")
            if not self.with_seg:
                return data, None, further
            return (data, store.read_range(shard.key, int(index.seg_offsets[row[1]]), int(index.seg_sizes[row[1]])),
                    further)

        reported = 0
        for row, (data, seg_data, further) in _prefetched(fetch, rows, store.range_read_concurrency):
            shard, index = self.shards[row[0]], self.indexes[row[0]]
            key = index.keys[row[1]].decode()
            if hashlib.sha256(data).hexdigest().encode() != index.digests[row[1]]:
                raise IntegrityError(f"shard {shard.key}: sample {key}: its rgb image does not match its sha256 in the "
                                     "shard index (the shard changed after it was rendered; re-render it)")
            if seg_data is not None and hashlib.sha256(seg_data).hexdigest().encode() != index.seg_digests[row[1]]:
                raise IntegrityError(f"shard {shard.key}: sample {key}: its seg.png does not match its sha256 in the "
                                     "shard index (the shard changed after it was rendered; re-render it)")
            try:
                image, seg, extra = self._decode(data, seg_data, shard.source, rng, further)
            except (RuntimeError, ValueError) as exc:  # libpng reports a bad image as RuntimeError
                self._count_corrupt({"__key__": key, "__url__": shard.key}, exc, allowed)
                continue
            sample = {"image": image, "label": int(row[2]), "key": f"{shard.key}#{key}", "corrupt": self.corrupt - reported,
                      **extra}
            if seg is not None:
                sample["seg"] = seg
            yield sample
            reported = self.corrupt

    def _decode(self, data: bytes, seg_data: bytes | None, source: int, rng: np.random.Generator,
                further: dict[str, bytes] | None = None) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
        """(image, renumbered label map or None, the further members' entries: ``depth``, ``record``, ``view``)."""
        further = further or {}
        maps = {} if seg_data is None else {"seg": seg_data}
        if "depth.png" in further:
            maps["depth"] = further["depth.png"]
        image, decoded, view = decode_views(data, maps, self.input_size, self.augment, rng)
        seg = decoded.get("seg")
        if seg is not None:
            table = self.seg_tables[source]
            if int(seg.max()) >= len(table):
                raise ValueError(f"label map value {int(seg.max())} outside 0..{len(table) - 1} (class + 1)")
            seg = table[seg]
        extra: dict = {}
        if self.members:
            extra["view"] = view
        if "depth" in decoded:
            extra["depth"] = decoded["depth"]
        if "json" in further:
            extra["record"] = further["json"].decode("utf-8")
        return image, seg, extra

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        rng = derive_rng(self.seed, "data", self.split, self.epoch, self.rank, worker)
        if self.random_access:
            yield from self._random_access(worker, workers, rng)
            return
        units = split_units(self.units, workers, worker)
        store = open_store(self.store_url)
        allowed = self.max_corrupt_fraction * sum(u.samples for u in units)
        self.corrupt = 0
        reported = 0
        for sample, label in self._samples(store, units, allowed):
            try:
                image, seg, extra = self._decode(sample[find_rgb(sample)],
                                                 sample.get("seg.png") if self.with_seg else None,
                                                 sample["__source__"], rng, {m: sample[m] for m in self.members})
            except (RuntimeError, ValueError) as exc:  # libpng reports a bad image as RuntimeError
                self._count_corrupt(sample, exc, allowed)
                continue
            out = {"image": image, "label": label, "key": f"{sample['__url__']}#{sample['__key__']}",
                   "corrupt": self.corrupt - reported, **extra}
            if seg is not None:
                out["seg"] = seg
            yield out
            reported = self.corrupt


class FolderStream(IterableDataset):
    """Images with depth maps beside them, as a 3D-prior run reads them: ``<name>.png`` (or .jpg/.jpeg/.webp)
    with ``<name>.depth.npy`` (float depth along the viewing axis in metres; non-finite or <= 0: no surface).

    Yields what a :class:`ShardStream` with ``members=("depth.png", "json")`` yields: ``image``, ``label`` (0),
    ``key`` (the path), ``corrupt`` (0), ``depth`` (millimetre steps, 0 off the surface, as render stores them),
    ``view`` and ``record`` (a pinhole camera of vertical field of view ``fov_deg`` at the image's median depth).
    Training reads the images in a random order per epoch (``derive_rng(seed, "folder", epoch)``), ranks and
    loader workers taking every n-th; without ``augment`` in name order.

    Raises :class:`FlatlandError` naming the folder when it holds no such pairs, or an image without its depth
    map; and naming the file for a depth map that is not a 2-D array of the image's size.
    """

    IMAGES = (".png", ".jpg", ".jpeg", ".webp")

    def __init__(self, root: str, *, input_size: int, augment: AugmentSpec | None, fov_deg: float, seed: int = 0,
                 epoch: int = 0, rank: int = 0, world_size: int = 1):
        super().__init__()
        folder = Path(root)
        if not folder.is_dir():
            raise FlatlandError(f"prior.image_folder: {root} is not a directory")
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in self.IMAGES and p.is_file())
        missing = [p.name for p in images if not p.with_suffix(".depth.npy").is_file()]
        if missing:
            raise FlatlandError(f"prior.image_folder: {len(missing)} image(s) in {root} have no depth map beside them "
                                f"(<name>.depth.npy), e.g. {', '.join(missing[:3])}")
        if not images:
            raise FlatlandError(f"prior.image_folder: no images (<name>.png with <name>.depth.npy) in {root}")
        self.images = [str(p) for p in images]
        self.input_size, self.augment, self.fov_deg = input_size, augment, fov_deg
        self.seed, self.epoch, self.rank, self.world_size = seed, epoch, rank, world_size

    def __len__(self) -> int:
        return len(self.images[self.rank::self.world_size])

    def _sample(self, path: str, rng: np.random.Generator) -> dict:
        data = Path(path).read_bytes()
        depth_path = Path(path).with_suffix(".depth.npy")
        try:
            depth = np.load(depth_path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise FlatlandError(f"{depth_path}: not a readable .npy array ({exc})") from None
        image = decode_encoded(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        height, width = image.shape[1:]
        if depth.ndim != 2 or depth.shape != (height, width) or not np.issubdtype(depth.dtype, np.number):
            raise FlatlandError(f"{depth_path}: depth must be a 2-D numeric array of its image's size {(height, width)}, "
                                f"got {depth.dtype} {depth.shape}")
        depth = depth.astype(np.float64)
        surface = np.isfinite(depth) & (depth > 0)
        if not surface.any():
            raise FlatlandError(f"{depth_path}: no finite positive depth anywhere")
        steps = np.zeros(depth.shape, dtype=np.int64)  # millimetres, as render stores depth (0: no surface)
        steps[surface] = np.clip(np.rint(depth[surface] / 1e-3), 1, 65534).astype(np.int64)
        focal = 0.5 * height / math.tan(math.radians(self.fov_deg) / 2)
        record = {"camera": {"distance": float(np.median(depth[surface])), "fov_deg": self.fov_deg,
                             "intrinsics": {"fx": focal, "fy": focal, "cx": width / 2, "cy": height / 2}}}
        out, maps, view = decode_views(data, {"depth": torch.from_numpy(steps)}, self.input_size, self.augment, rng)
        return {"image": out, "label": 0, "key": path, "corrupt": 0, "depth": maps["depth"], "view": view,
                "record": json.dumps(record)}

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        order = (derive_rng(self.seed, "folder", self.epoch).permutation(len(self.images)) if self.augment is not None
                 else np.arange(len(self.images)))
        rng = derive_rng(self.seed, "folder", self.epoch, self.rank, worker)
        for i in order[self.rank::self.world_size][worker::workers]:
            yield self._sample(self.images[i], rng)


def make_loader(stream: IterableDataset, *, batch_size: int, workers: int, train: bool, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over ``stream``; training drops each worker's last partial batch."""
    return DataLoader(
        stream,
        batch_size=batch_size,
        num_workers=workers,
        drop_last=train,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )


def to_model_input(images: torch.Tensor, device: torch.device, *, channels_last: bool = False,
                   mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """(N, H, W, 3) uint8 batch → (N, 3, H, W) float32 normalised, on ``device``.

    The permuted view is natively channels-last; on the CPU it is made contiguous
    (NCHW) so results do not depend on the memory format.
    """
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2)
    x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    x = x.float().div_(255.0)
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t
