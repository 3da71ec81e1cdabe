"""Streaming shards: coverage without duplicates across ranks and workers, determinism, integrity."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch

from services.common.errors import FlatlandError, IntegrityError, ObjectNotFoundError
from services.common.spec.train import AugmentSpec
from services.train.data import (
    ShardStream, WorkUnit, _tar_members, dataset_shards, decode_image, iter_shard_samples, make_loader, random_resized_crop_box, split_units,
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


def test_tampered_shard_is_named(shapes):
    store, manifest = shapes
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
