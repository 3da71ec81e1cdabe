"""Streaming shards: coverage without duplicates across ranks and workers, determinism, integrity."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch

from services.common.errors import FlatlandError, IntegrityError, ObjectNotFoundError
from services.common.spec.train import AugmentSpec
from services.render.keys import shard_index_key
from services.train.data import (
    ShardIndex, ShardStream, WorkUnit, _scan_index, _tar_members, dataset_shards, decode_image, epoch_order,
    iter_shard_samples, make_loader, random_resized_crop_box, shard_index, split_units,
)
from services.common.seeds import derive_rng
from tests.train.synthetic_shards import write_dataset

DATASET = "shapes-0123456789"


@pytest.fixture
def shapes(local_store):
    manifest = write_dataset(local_store, DATASET, classes=4, views={"train": 15, "val": 3}, size=24, samples_per_shard=16)
    return local_store, manifest


def _keys(store, shards, *, world=1, rank=0, workers=0, epoch=0, augment=AugmentSpec(), seed=0, **kw):
    stream = ShardStream(store.url, shards, [np.arange(4)], input_size=16, augment=augment, shuffle_buffer=8,
                         seed=seed, epoch=epoch, rank=rank, world_size=world, **kw)
    keys, images, labels = [], [], []
    for batch in make_loader(stream, batch_size=5, workers=workers, train=False):
        keys += batch["key"]
        images.append(batch["image"])
        labels.append(batch["label"])
    return keys, torch.cat(images), torch.cat(labels)


@pytest.mark.parametrize("n_units", [1, 3, 4, 9])
@pytest.mark.parametrize("parts", [1, 2, 4])
def test_split_units_is_a_partition(n_units, parts):
    units = [WorkUnit(shard) for shard in range(n_units)]  # shard stand-ins; only identity matters

    def members(us):
        return {(u.shard, j) for u in us for j in range(40) if j % u.stride == u.offset}

    pieces = [members(split_units(split_units(units, parts, p), 2, w)) for p in range(parts) for w in range(2)]
    assert set().union(*pieces) == {(s, j) for s in range(n_units) for j in range(40)}
    assert sum(len(p) for p in pieces) == n_units * 40  # no sample in two pieces


def test_ranks_and_workers_see_disjoint_data_covering_the_split(shapes):
    store, _ = shapes
    shards = dataset_shards(store, DATASET, "train")
    assert len(shards) == 4 and sum(s.samples for s in shards) == 60
    seen = []
    for rank in range(2):
        keys, images, labels = _keys(store, shards, world=2, rank=rank, workers=2)
        seen.append(keys)
        assert images.shape[1:] == (16, 16, 3) and images.dtype == torch.uint8
        # The label is the class encoded in the sample key.
        assert labels.tolist() == [int(k.split("#")[1][:5]) for k in keys]
    assert not set(seen[0]) & set(seen[1])
    assert len(seen[0]) + len(seen[1]) == 60 == len(set(seen[0]) | set(seen[1]))


def test_more_parts_than_shards_still_partitions(local_store):
    write_dataset(local_store, DATASET, classes=3, views={"train": 5}, size=16, samples_per_shard=100)
    shards = dataset_shards(local_store, DATASET, "train")
    assert len(shards) == 1
    parts = [_keys(local_store, shards, world=3, rank=r, workers=2)[0] for r in range(3)]
    assert sorted(sum(parts, [])) == sorted(set(sum(parts, []))) and len(sum(parts, [])) == 15


def test_stream_is_deterministic_and_epoch_reshuffles(shapes):
    store, _ = shapes
    shards = dataset_shards(store, DATASET, "train")
    a_keys, a_images, _ = _keys(store, shards, workers=2, epoch=3)
    b_keys, b_images, _ = _keys(store, shards, workers=2, epoch=3)
    c_keys, _, _ = _keys(store, shards, workers=2, epoch=4)
    assert a_keys == b_keys and torch.equal(a_images, b_images)
    assert c_keys != a_keys and sorted(c_keys) == sorted(a_keys)
    # Evaluation streams are unshuffled and unaugmented: tar order.
    e_keys, _, _ = _keys(store, shards, augment=None)
    tar_order = [f"{s.key}#{raw['__key__']}" for s in shards for raw in iter_shard_samples(store, s)]
    assert e_keys == tar_order


def test_augmentation_crops_and_flips_within_bounds():
    rng = derive_rng(0, "test")
    for _ in range(200):
        left, top, right, bottom = random_resized_crop_box(40, 30, (0.3, 1.0), (0.75, 4 / 3), rng)
        assert 0 <= left < right <= 40 and 0 <= top < bottom <= 30
        assert (right - left) * (bottom - top) >= 0.25 * 40 * 30
    image = np.zeros((20, 20, 3), np.uint8)
    image[:, :10] = 255  # left half white
    from tests.train.synthetic_shards import _png

    png = _png(image)
    plain = decode_image(png, 20, None, rng)
    assert np.array_equal(plain.numpy(), image)
    flips = [float(decode_image(png, 20, AugmentSpec(random_resized_crop=False), rng)[:, 0, 0].float().mean()) for _ in range(40)]
    assert {0.0, 255.0} == set(flips)  # sometimes flipped, sometimes not


def test_tampered_shard_is_named(local_store):
    # shards without an index are indexed by one verified pass: any changed byte is caught
    write_dataset(local_store, DATASET, classes=4, views={"train": 15}, size=24, samples_per_shard=16, index=False)
    store = local_store
    key = f"datasets/{DATASET}/train-00001.tar"
    data = bytearray(store.get_bytes(key))
    data[-2000] ^= 0xFF  # same size, different content (inside padding or a member: either way a checksum mismatch)
    store.put_bytes(key, bytes(data))
    shards = dataset_shards(store, DATASET, "train")
    with pytest.raises(IntegrityError, match="train-00001.tar"):
        _keys(store, shards)
    store.put_bytes(key, bytes(data[:5000]))  # truncated: caught before reading
    with pytest.raises(IntegrityError, match="train-00001.tar.*manifest says"):
        _keys(store, shards)


def test_changed_image_in_an_indexed_shard_is_named(shapes):
    store, _ = shapes
    key = f"datasets/{DATASET}/train-00002.tar"
    index = store.get_json(shard_index_key(key))
    sample, _, offset, size, _ = index["samples"][3][:5]  # label-map columns follow
    data = bytearray(store.get_bytes(key))
    data[offset + size // 2] ^= 0xFF  # one byte of one image: size unchanged
    store.put_bytes(key, bytes(data))
    with pytest.raises(IntegrityError, match=f"train-00002.tar: sample {sample}"):
        _keys(store, dataset_shards(store, DATASET, "train"))


def test_random_access_reads_the_images_the_shard_holds(shapes):
    store, _ = shapes
    shards = dataset_shards(store, DATASET, "train")
    for shard in shards:
        streamed = {raw["__key__"]: raw["rgb.png"] for raw in iter_shard_samples(store, shard)}
        index = shard_index(store, shard)
        assert [k.decode() for k in index.keys] == list(streamed)
        for k, offset, size in zip(index.keys, index.offsets, index.sizes):
            assert store.read_range(shard.key, int(offset), int(size)) == streamed[k.decode()]
    # the index render wrote and the one a pass over the tar finds agree
    scanned = _scan_index(store, shards[0])
    written = shard_index(store, shards[0])
    for field in ("keys", "classes", "offsets", "sizes", "digests"):
        assert np.array_equal(getattr(scanned, field), getattr(written, field)), field


def _batch_classes(store, shards, tables, *, batch_size, workers, world=1, epoch=0):
    """Per batch (all ranks): the labels and the dataset (source) of every sample, through the real DataLoader."""
    batches = []
    for rank in range(world):
        stream = ShardStream(store.url, shards, tables, input_size=8, augment=AugmentSpec(), seed=0, epoch=epoch,
                             rank=rank, world_size=world)
        for batch in make_loader(stream, batch_size=batch_size, workers=workers, train=True):
            batches.append((batch["label"].numpy(), [k.split("/")[1] for k in batch["key"]]))
    return batches


def _expected_distinct(classes, batch_size):
    return classes * (1 - (1 - 1 / classes) ** batch_size)


@pytest.mark.parametrize("workers, world", [(0, 1), (2, 1), (2, 2)])
def test_batches_mix_classes_like_uniform_sampling_over_class_ordered_shards(local_store, workers, world):
    # class-ordered shards of two classes each, as render writes 1000-class datasets with 2000-sample shards
    write_dataset(local_store, DATASET, classes=40, views={"train": 12}, size=8, samples_per_shard=24)
    shards = dataset_shards(local_store, DATASET, "train")
    assert len(shards) == 20
    batches = _batch_classes(local_store, shards, [np.arange(40)], batch_size=16, workers=workers, world=world)
    distinct = np.mean([len(set(labels.tolist())) for labels, _ in batches])
    # streaming these shards through a shuffle buffer gave ~3 classes per batch
    assert distinct / _expected_distinct(40, 16) > 0.9


def test_a_mix_gives_each_batch_its_class_proportions(local_store):
    other = "other-9876543210"
    write_dataset(local_store, DATASET, classes=10, views={"train": 20}, size=8, samples_per_shard=40)
    write_dataset(local_store, other, classes=10, views={"train": 20}, size=8, samples_per_shard=40, seed=1)
    shards = dataset_shards(local_store, DATASET, "train", source=0) + dataset_shards(local_store, other, "train", source=1)
    tables = [np.arange(10), np.where(np.arange(10) < 5, np.arange(10) + 10, -1)]  # 10 + 5 classes: 2/3 and 1/3
    batches = _batch_classes(local_store, shards, tables, batch_size=12, workers=2)
    share = np.mean([np.mean([name == DATASET for name in names]) for _, names in batches])
    assert abs(share - 2 / 3) < 0.08
    assert all(labels.max() < 15 for labels, _ in batches)


def test_full_study_geometry_gives_uniformly_mixed_batches():
    """At the full study's size (1000 classes x ~1000 views, 2000-sample shards, batch 256, 8 workers)
    the loader's order, over shards laid out by render's plan, gives ~226 classes per batch."""
    from pathlib import Path

    from services.common.spec import load_spec
    from services.render.api import layout, shard_plan

    spec = load_spec(Path(__file__).resolve().parents[2] / "experiments" / "beyond-flatland.yaml")
    run = next(r for r in spec.pretrain if r.name == "r50-procsynth")
    dataset = spec.dataset("procsynth")
    lay = layout(dataset)
    per_class = lay.count("train") // lay.classes
    indexes = []
    for task in shard_plan(spec, "procsynth"):
        if task.split == "train":
            assert lay.sample("train", task.start)[0] == task.start // per_class  # render's class order
            classes = np.arange(task.start, task.stop) // per_class
            n = len(classes)
            indexes.append(ShardIndex(np.zeros(n, "S1"), classes, np.zeros(n, np.int64), np.zeros(n, np.int64),
                                      np.zeros(n, "S1")))
    assert len({tuple(np.unique(i.classes)) for i in indexes}) == len(indexes) and max(
        len(np.unique(i.classes)) for i in indexes) <= 4  # a shard holds a handful of classes
    rows = epoch_order(indexes, [0] * len(indexes), [np.arange(1000)], seed=run.seed, split="train", epoch=0)
    distinct = []
    for worker in range(run.workers):  # the DataLoader batches each worker's share on its own
        mine = rows[worker::run.workers, 2]
        distinct += [len(np.unique(mine[i:i + run.batch_size]))
                     for i in range(0, len(mine) - run.batch_size + 1, run.batch_size)][:50]
    assert np.mean(distinct) / _expected_distinct(1000, run.batch_size) >= 0.95


def test_corrupt_samples_are_skipped_and_counted_up_to_the_limit(local_store):
    bad = frozenset({"00001_0_00002", "00002_0_00004"})
    write_dataset(local_store, DATASET, classes=4, views={"train": 10}, size=16, samples_per_shard=40, corrupt_keys=bad)
    shards = dataset_shards(local_store, DATASET, "train")
    stream = ShardStream(local_store.url, shards, [np.arange(4)], input_size=16, augment=None,
                         max_corrupt_fraction=0.1)
    samples = list(stream)
    assert len(samples) == 38 and sum(s["corrupt"] for s in samples) == 2
    assert not any(k in s["key"] for s in samples for k in bad)
    with pytest.raises(IntegrityError, match="corrupt samples.*max_corrupt_fraction=0.01"):
        list(ShardStream(local_store.url, shards, [np.arange(4)], input_size=16, augment=None, max_corrupt_fraction=0.01))


def test_missing_and_empty_datasets_are_named(local_store):
    with pytest.raises(ObjectNotFoundError, match=f"datasets/{DATASET}/manifest.json"):
        dataset_shards(local_store, DATASET, "train")
    write_dataset(local_store, DATASET, classes=2, views={"train": 2}, size=16)
    with pytest.raises(FlatlandError, match="no 'val' samples"):
        dataset_shards(local_store, DATASET, "val")


def test_streams_from_s3_without_downloading(s3_store):
    write_dataset(s3_store, DATASET, classes=3, views={"train": 4}, size=16, samples_per_shard=5)
    shards = dataset_shards(s3_store, DATASET, "train")
    keys, images, _ = _keys(s3_store, shards, workers=0)
    assert len(keys) == 12 == len(set(keys))
    assert images.float().std() > 10  # real pixels came through


@pytest.mark.parametrize("tar_format", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_reader_understands_long_names_and_skips_other_members(tar_format):
    long_key = "x" * 120 if tar_format != tarfile.USTAR_FORMAT else "short"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format) as tar:
        for name, data in ((f"{long_key}.rgb.png", b"png-bytes"), (f"{long_key}.depth.npy", b"d" * 3000),
                           (f"{long_key}.cls", b"3"), ("ünï.cls", b"1")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    members = list(_tar_members(buffer, "shard"))
    assert [(m["fname"], m["data"]) for m in members] == [
        (f"{long_key}.rgb.png", b"png-bytes"), (f"{long_key}.cls", b"3"), ("ünï.cls", b"1")]


def test_random_crop_takes_a_window_without_rescaling():
    rng = derive_rng(0, "crop")
    image = derive_rng(1, "image").integers(0, 256, size=(40, 36, 3), dtype=np.uint8)
    png = _png_bytes(image)
    augment = AugmentSpec(random_resized_crop=False, random_crop=True, horizontal_flip=False)
    corners = set()
    for _ in range(30):
        crop = decode_image(png, 24, augment, rng).numpy()
        matches = [(y, x) for y in range(17) for x in range(13) if np.array_equal(image[y:y + 24, x:x + 24], crop)]
        assert len(matches) == 1  # an exact window of the original: no resampling, no flip
        corners.add(matches[0])
    assert len(corners) > 10
    small = decode_image(_png_bytes(image[:20, :20]), 24, augment, rng)
    assert small.shape == (24, 24, 3)  # smaller than the input: scaled up, then cropped


def _png_bytes(array):
    from tests.train.synthetic_shards import _png

    return _png(array)


def test_folds_are_class_stratified_and_partition_the_split():
    from services.train.data import Folds

    rows = np.stack([np.zeros(90, int), np.arange(90), np.repeat(np.arange(6), 15)], axis=1)
    held = [Folds(3, k, held_out=True, seed=4).select(rows) for k in range(3)]
    assert sorted(np.concatenate(held)[:, 1].tolist()) == list(range(90))  # each sample held out exactly once
    assert all((np.bincount(h[:, 2], minlength=6) == 5).all() for h in held)  # every class in every fold
    rest = Folds(3, 1, held_out=False, seed=4).select(rows)
    assert set(rest[:, 1]) == set(range(90)) - set(held[1][:, 1])
    half = [Folds(3, k, held_out=True, seed=4, fraction=0.4).select(rows) for k in range(3)]
    assert sum(len(h) for h in half) == 6 * 6  # ceil(0.4 * 15) per class
