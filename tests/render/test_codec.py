"""The compact store: depth as 16-bit millimetres within its stated precision, RGB formats, declared outputs."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch
import torchvision.io
from PIL import Image

from services.common.errors import SpecError
from services.common.spec.experiment import parse_spec
from services.render.api import DEPTH_MAX_M, DEPTH_PRECISION_M, decode_depth, decode_rgb, find_rgb
from services.render.codec import encode_depth, encode_png, encode_rgb
from services.render.job import run_job
from services.render.keys import shard_index_key
from services.render.views import decode_png, render_record

from .meshdata import primitive_meshes, tiny_spec, write_meshes


def test_depth_round_trip_is_within_half_a_millimetre():
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.01, 60.0, size=(64, 64)).astype(np.float32)
    depth[rng.random((64, 64)) < 0.3] = np.inf  # background
    back = decode_depth(encode_depth(depth))
    assert back.dtype == np.float32 and back.shape == depth.shape
    surface = np.isfinite(depth)
    assert np.array_equal(np.isfinite(back), surface)
    error = np.abs(back[surface].astype(np.float64) - depth[surface])
    assert error.max() <= DEPTH_PRECISION_M + 4e-6  # plus float32 rounding: its spacing at 60 m is ~4e-6 m
    assert error.max() > DEPTH_PRECISION_M / 2  # rounding really happens: the bound is not vacuous


def test_depth_edges_saturate_or_fail_clearly():
    depth = np.array([[0.0001, 100.0, np.nan, 2.5]], dtype=np.float32)
    back = decode_depth(encode_depth(depth))
    assert back[0, 0] == pytest.approx(0.001)  # a surface stays a surface
    assert back[0, 1] == pytest.approx(DEPTH_MAX_M)  # beyond the range: the far limit
    assert np.isinf(back[0, 2]) and back[0, 3] == pytest.approx(2.5)
    with pytest.raises(ValueError, match=">= 0"):
        encode_depth(np.array([[-1.0]]))
    with pytest.raises(ValueError, match="16-bit"):
        decode_depth(encode_rgb(np.zeros((4, 4, 3), np.uint8))[1])


@pytest.mark.parametrize("fmt,member,lossless", [("png", "rgb.png", True), ("webp", "rgb.webp", True),
                                                  ("jpeg", "rgb.jpg", False)])
def test_rgb_formats_decode_here_and_in_the_loader(fmt, member, lossless):
    from services.train.data import decode_image

    rng = np.random.default_rng(1)
    image = np.zeros((32, 32, 3), np.uint8)
    image[8:24, 8:24] = rng.integers(0, 255, size=(16, 16, 3), dtype=np.uint8) // 32 * 32 + 40
    name, data = encode_rgb(image, fmt)
    assert name == member and encode_rgb(image, fmt)[1] == data  # deterministic
    back = decode_rgb(data)
    if lossless:
        assert np.array_equal(back, image)
    else:
        assert np.abs(back.astype(int) - image).mean() < 6
    tensor = decode_image(data, 32, None, np.random.default_rng(0))  # the training loader's decoder
    assert tuple(tensor.shape) == (32, 32, 3) and torch.equal(tensor, torch.from_numpy(back.copy()))


def test_unknown_format_and_outputs_are_named():
    with pytest.raises(ValueError, match="png, webp, jpeg"):
        encode_rgb(np.zeros((2, 2, 3), np.uint8), "gif")
    with pytest.raises(SpecError, match="outputs must include 'rgb'"):
        tiny_spec(outputs=["depth"])
    with pytest.raises(SpecError, match="fractal2d images have no depth"):
        parse_spec({"name": "f", "datasets": [{"name": "fr", "family": {"family": "fractal2d"},
                                               "fractal_render": {"outputs": ["rgb", "depth"]}}]})


def members(store, key) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(store.get_bytes(key))) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_declared_outputs_and_webp_reach_the_shards_index_and_loader(store):
    from services.train.data import ShardStream, dataset_shards

    spec = tiny_spec(outputs=["rgb"], rgb_format="webp")
    prims = primitive_meshes()
    write_meshes(store, spec, "shapes", {(c, i): prims[2 * c + i] for c in range(2) for i in range(2)})
    run_job(spec, store)
    dataset_id = spec.dataset_id("shapes")
    key = f"datasets/{dataset_id}/val-00000.tar"
    files = members(store, key)
    assert {name.split(".", 1)[1] for name in files} == {"rgb.webp", "json", "cls"}
    # the shard index points at the WebP member, whose pixels are the render's, losslessly
    index = store.get_json(shard_index_key(key))
    sample, _, offset, size, _ = index["samples"][0][:5]  # label-map columns may follow
    assert store.read_range(key, offset, size) == files[f"{sample}.rgb.webp"]
    import json

    record = json.loads(files[f"{sample}.json"])
    assert np.array_equal(decode_rgb(files[f"{sample}.rgb.webp"]), render_record(record, store=store).rgb)
    assert find_rgb({"rgb.webp": 1, "json": 2}) == "rgb.webp"
    # the loader streams (and randomly accesses) WebP samples
    from services.common.spec.train import AugmentSpec

    for augment in (None, AugmentSpec()):  # streamed in tar order, or read at the index's offsets
        stream = ShardStream(store.url, dataset_shards(store, dataset_id, "val"), [np.arange(2)], input_size=16,
                             augment=augment)
        assert stream.random_access == (augment is not None)
        got = list(stream)
        assert len(got) == 4 and sum(s["corrupt"] for s in got) == 0


def test_default_outputs_store_compact_depth(shapes):
    spec, store = shapes
    run_job(spec, store)
    files = members(store, f"datasets/{spec.dataset_id('shapes')}/train-00000.tar")
    depth = [data for name, data in files.items() if name.endswith(".depth.png")]
    masks = [decode_png(data) for name, data in files.items() if name.endswith(".mask.png")]
    assert len(depth) == 7 and not any(name.endswith(".npy") for name in files)
    for data, mask in zip(depth, masks):
        # 48 x 48 float32 would be 9.3 KB; millimetres in a 16-bit PNG are a fraction of that
        assert len(data) < 4000 and np.array_equal(np.isfinite(decode_depth(data)), mask == 255)


@pytest.mark.parametrize("shape,dtype", [((37, 53, 3), np.uint8), ((5, 7), np.uint8), ((9, 11), np.uint16),
                                         ((4, 6, 4), np.uint8), ((1, 1, 3), np.uint8), ((64, 3), np.uint16)])
def test_png_writer_is_lossless_for_pillow_and_torchvision(shape, dtype):
    image = np.random.default_rng(sum(shape)).integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)
    data = encode_png(image)
    with Image.open(io.BytesIO(data)) as pil:
        pil.load()  # verifies every chunk's CRC and the zlib stream
        assert pil.size == (shape[1], shape[0])
    assert np.array_equal(decode_png(data).reshape(shape), image)
    decoded = torchvision.io.decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                        mode=torchvision.io.ImageReadMode.UNCHANGED)
    assert np.array_equal(decoded.permute(1, 2, 0).numpy().astype(dtype).reshape(shape), image)
    assert encode_png(image) == data  # deterministic


def test_png_writer_names_what_it_cannot_store():
    for bad in (np.zeros((3, 3), np.float32), np.zeros((3, 3, 2), np.uint8), np.zeros((0, 3), np.uint8)):
        with pytest.raises(ValueError, match="encode_png takes"):
            encode_png(bad)
