"""Shards: layout and manifest per the contract, byte-identical reruns, resume after a crash, the plan."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile

import numpy as np
import pytest

from services.common.manifest import read_manifest, verify_manifest
from services.common.spec.experiment import parse_spec
from services.render import output as shards_module
from services.render.job import run_job
from services.render.keys import shard_index_key
from services.render.plan import all_shards, shard_plan, shards_for_index
from services.render.api import DEPTH_PRECISION_M, decode_depth
from services.render.views import decode_png, redraw_record, render_record

from .meshdata import SIERPINSKI, write_ifs


def members(store, key) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(store.get_bytes(key))) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_shards_follow_the_contract(shapes):
    spec, store = shapes
    summary = run_job(spec, store)
    dataset_id = spec.dataset_id("shapes")
    manifest = read_manifest(store, f"datasets/{dataset_id}/manifest.json")
    assert manifest.kind == "dataset" and verify_manifest(store, manifest) == []
    # 2 classes x 2 instances x 5 views, 1 of 5 held out: 16 train, 4 val; shards of 7
    assert manifest.metadata["splits"] == {"train": 16, "val": 4}
    assert [(e.split, e.shard, e.samples) for e in manifest.entries] == [
        ("train", 0, 7), ("train", 1, 7), ("train", 2, 2), ("val", 0, 4)]
    assert summary["samples"] == 20 and store.exists(f"datasets/{dataset_id}/contact-sheet.png")
    files = members(store, f"datasets/{dataset_id}/val-00000.tar")
    keys = sorted({name.split(".", 1)[0] for name in files})
    assert keys == ["00000_0_00004", "00000_1_00004", "00001_0_00004", "00001_1_00004"]
    assert {name.split(".", 1)[1] for name in files} == {"rgb.png", "depth.png", "seg.png", "mask.png", "json", "cls"}
    sample = "00001_1_00004"
    rgb, depth = decode_png(files[f"{sample}.rgb.png"]), decode_depth(files[f"{sample}.depth.png"])
    seg, mask = decode_png(files[f"{sample}.seg.png"]), decode_png(files[f"{sample}.mask.png"])
    assert rgb.shape == (48, 48, 3) and depth.dtype == np.float32 and seg.dtype == np.uint16
    assert np.array_equal(mask == 255, np.isfinite(depth)) and np.array_equal(seg == 2, mask == 255)
    assert files[f"{sample}.cls"] == b"1"
    record = json.loads(files[f"{sample}.json"])
    assert (record["class_index"], record["instance"], record["view"]) == (1, 1, 4)
    # the record alone re-renders the stored image
    again = render_record(record, store=store)
    assert np.array_equal(again.rgb, rgb) and np.array_equal(np.isfinite(again.depth), np.isfinite(depth))
    seen = np.isfinite(depth)
    assert np.array_equal(np.isfinite(again.depth), seen)
    assert np.abs(again.depth[seen] - depth[seen]).max() <= DEPTH_PRECISION_M + 1e-6  # millimetres, rounded
    # each shard's index says where every sample's image lies in the tar, its class and digest
    indexed_label_maps = 0
    for entry in manifest.entries:
        index = store.get_json(shard_index_key(entry.key))
        assert index["sha256"] == entry.sha256 and len(index["samples"]) == entry.samples
        files = members(store, entry.key)
        for key, cls, offset, size, digest, *seg in index["samples"]:
            image = store.read_range(entry.key, offset, size)
            assert image == files[f"{key}.rgb.png"] and hashlib.sha256(image).hexdigest() == digest
            assert str(cls).encode() == files[f"{key}.cls"]
            # ... and where its label map lies, when it has one
            assert len(seg) == (3 if f"{key}.seg.png" in files else 0)
            if seg:
                labels = store.read_range(entry.key, seg[0], seg[1])
                assert labels == files[f"{key}.seg.png"] and hashlib.sha256(labels).hexdigest() == seg[2]
                indexed_label_maps += 1
    assert indexed_label_maps > 0  # this spec's outputs include seg


def test_same_spec_gives_byte_identical_shards(shapes, tmp_path):
    spec, store = shapes
    run_job(spec, store)
    dataset_id = spec.dataset_id("shapes")
    first = {k: store.get_bytes(k) for k in store.list(f"datasets/{dataset_id}/") if k.endswith(".tar")}
    for key in first:
        store.delete(key)
    store.delete(f"datasets/{dataset_id}/manifest.json")
    for key in list(store.list(f"datasets/{dataset_id}/parts/")):
        store.delete(key)
    run_job(spec, store)
    assert {k: store.get_bytes(k) for k in first} == first


def test_killed_job_resumes_without_losing_or_duplicating(shapes, monkeypatch):
    spec, store = shapes
    dataset_id = spec.dataset_id("shapes")
    reference = None
    real_write = shards_module.DeterministicTarWriter.write
    calls = {"n": 0}

    def crash_midway(self, key, files):
        calls["n"] += 1
        if calls["n"] == 10:  # inside the second shard
            raise KeyboardInterrupt("killed")
        return real_write(self, key, files)

    monkeypatch.setattr(shards_module.DeterministicTarWriter, "write", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        run_job(spec, store)
    manifest = read_manifest(store, f"datasets/{dataset_id}/manifest.json")
    assert [e.key.rsplit("/", 1)[1] for e in manifest.entries] == ["train-00000.tar"]
    assert not store.exists(f"datasets/{dataset_id}/train-00001.tar")
    monkeypatch.setattr(shards_module.DeterministicTarWriter, "write", real_write)
    summary = run_job(spec, store)
    assert summary["skipped"] == 1 and summary["written"] == 3
    manifest = read_manifest(store, f"datasets/{dataset_id}/manifest.json")
    assert verify_manifest(store, manifest) == []
    keys = [name.split(".", 1)[0] for e in manifest.entries for name in members(store, e.key) if name.endswith(".cls")]
    assert len(keys) == len(set(keys)) == 20
    # a clean run in another store gives the same bytes
    from services.common.store import LocalStore
    from .meshdata import primitive_meshes, write_meshes
    clean = LocalStore(store.root.parent / "clean")
    prims = primitive_meshes()
    write_meshes(clean, spec, "shapes", {(c, i): prims[2 * c + i] for c in range(2) for i in range(2)})
    run_job(spec, clean)
    for entry in manifest.entries:
        assert clean.get_bytes(entry.key) == store.get_bytes(entry.key)
    again = run_job(spec, store)
    assert again["written"] == 0 and again["skipped"] == 4


def test_degenerate_mesh_is_reported_and_the_rest_rendered(store):
    import trimesh
    from .meshdata import tiny_spec, write_meshes

    spec = tiny_spec()
    nan_mesh = trimesh.creation.box()
    nan_mesh.vertices[0] = np.nan
    broken = {(0, 0): trimesh.creation.box(), (0, 1): nan_mesh.export(file_type="glb"),
              (1, 0): trimesh.creation.icosphere(), (1, 1): trimesh.creation.box()}
    write_meshes(store, spec, "shapes", broken)
    summary = run_job(spec, store)
    assert summary["samples"] == 15
    assert {f["item"] for f in summary["failures"]} == {"class 0 instance 1"}
    assert "NaN" in summary["failures"][0]["message"]


def test_missing_meshes_raise_not_found(store):
    from services.common.errors import ObjectNotFoundError
    from .meshdata import tiny_spec

    with pytest.raises(ObjectNotFoundError, match="meshgen"):
        run_job(tiny_spec(), store)


def test_plan_covers_every_shard_exactly_once():
    spec = parse_spec({"name": "p", "datasets": [
        {"name": "a", "family": {"family": "procsynth"}, "classes": 3, "render": {"views_per_instance": 7, "shard_size": 5}},
        {"name": "b", "family": {"family": "fractal2d"}, "classes": 2, "fractal_render": {"shard_size": 64}},
        {"name": "c", "family": {"family": "noisescenes", "scenes": 30, "shard_size": 8}},
    ]})
    everything = all_shards(spec)
    assert everything == [t for name in ("a", "b", "c") for t in shard_plan(spec, name)]
    for count in (1, 3, 7):
        dealt = [t for i in range(count) for t in shards_for_index(spec, i, count)]
        assert sorted(dealt, key=everything.index) == everything
    # sample ranges of each split tile [0, n) without gaps
    for name in ("a", "b", "c"):
        for split in ("train", "val"):
            tasks = [t for t in shard_plan(spec, name) if t.split == split]
            assert all(t.start == (tasks[i - 1].stop if i else 0) for i, t in enumerate(tasks))
    with pytest.raises(ValueError, match="index"):
        shards_for_index(spec, 3, 3)


def test_fractal_and_noise_scene_datasets(store):
    spec = parse_spec({"name": "f", "seed": 1, "datasets": [
        {"name": "frac", "family": {"family": "fractal2d", "weight_step": 0.2}, "classes": 2, "instances_per_class": 3,
         "fractal_render": {"image_size": 40, "points": 4000, "drawings_per_variant": 2, "val_fraction": 0.5,
                            "shard_size": 50}},
        {"name": "noise", "family": {"family": "noisescenes", "scenes": 5, "image_size": 32, "val_fraction": 0.2},
         "classes": 3},
    ]})
    write_ifs(store, spec, "frac", [SIERPINSKI, [[0.6, -0.3, 0.3, 0.6, 0, 0], [0.4, 0.2, -0.2, 0.4, 0.5, 0.3]]])
    run_job(spec, store)
    frac_id, noise_id = spec.dataset_id("frac"), spec.dataset_id("noise")
    manifest = read_manifest(store, f"datasets/{frac_id}/manifest.json")
    # 2 classes x 3 variants x 4 flips x 2 drawings, half held out
    assert manifest.metadata["splits"] == {"train": 24, "val": 24}
    files = members(store, f"datasets/{frac_id}/train-00000.tar")
    records = [json.loads(v) for k, v in files.items() if k.endswith(".json")]
    assert {(r["instance"], r["flip"]) for r in records if r["class_index"] == 1} == {(i, f) for i in range(3) for f in range(4)}
    a = [r for r in records if (r["class_index"], r["instance"], r["drawing"], r["flip"]) == (0, 0, 0, 0)][0]
    b = [r for r in records if (r["class_index"], r["instance"], r["drawing"], r["flip"]) == (0, 0, 0, 1)][0]
    image_a = decode_png(files[f"00000_0_{a['view']:05d}.rgb.png"])[..., 0]
    image_b = decode_png(files[f"00000_0_{b['view']:05d}.rgb.png"])[..., 0]
    assert image_a.any() and set(np.unique(image_a)) <= {0, int(image_a.max())}
    assert not np.array_equal(image_a, image_b)  # another drawing seed and a flip
    # any record re-draws its stored image
    assert np.array_equal(redraw_record(a), decode_png(files[f"00000_0_{a['view']:05d}.rgb.png"]))
    noise = members(store, f"datasets/{noise_id}/train-00000.tar")
    assert len([k for k in noise if k.endswith(".cls")]) == 4
    for name, data in noise.items():
        if name.endswith(".seg.png"):
            labels = decode_png(data)
            record = json.loads(noise[name.replace(".seg.png", ".json")])
            drawn = {o["class_index"] + 1 for o in record["objects"]}
            assert set(np.unique(labels)) - {0} <= drawn
            assert int(noise[name.replace(".seg.png", ".cls")]) == record["class_index"]
            assert np.array_equal(redraw_record(record), decode_png(noise[name.replace(".seg.png", ".rgb.png")]))


KILL_SCRIPT = """
import os, sys, time
os.environ["PYOPENGL_PLATFORM"] = "osmesa"
from services.common.spec.experiment import load_spec
from services.common.store import LocalStore
from services.render.job import run_job
def slow(task, done, total):
    time.sleep(1.0)  # leave the parent time to kill us before the next shard
run_job(load_spec(sys.argv[1]), LocalStore(sys.argv[2]), progress=slow)
"""


def test_sigkilled_job_resumes_to_the_same_shards(shapes, tmp_path):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import yaml

    from services.common.store import LocalStore
    from .meshdata import primitive_meshes, write_meshes

    spec, store = shapes
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    dataset_id = spec.dataset_id("shapes")
    manifest_key = f"datasets/{dataset_id}/manifest.json"
    process = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(spec_path), str(store.root)],
                               cwd=Path(__file__).resolve().parents[2], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        manifest = read_manifest(store, manifest_key) if store.exists(manifest_key) else None
        if manifest is not None and len(manifest.entries) >= 1:
            break
        time.sleep(0.05)
    assert process.poll() is None, process.stderr.read().decode()
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_with = len(read_manifest(store, manifest_key).entries)
    assert 1 <= killed_with < 4
    summary = run_job(spec, store)
    assert summary["skipped"] >= 1 and summary["skipped"] + summary["written"] == 4
    clean = LocalStore(tmp_path / "clean")
    prims = primitive_meshes()
    write_meshes(clean, spec, "shapes", {(c, i): prims[2 * c + i] for c in range(2) for i in range(2)})
    run_job(spec, clean)
    resumed, reference = read_manifest(store, manifest_key), read_manifest(clean, manifest_key)
    assert [(e.key, e.sha256, e.samples) for e in resumed.entries] == [(e.key, e.sha256, e.samples) for e in reference.entries]


def _flip(store, key, at: int = 700) -> None:
    data = bytearray(store.get_bytes(key))
    data[at % len(data)] ^= 0x01
    store.put_bytes(key, bytes(data))


def _damage_each_way():
    return [
        ("flipped byte in a shard", lambda store, shard: _flip(store, shard)),
        ("truncated shard", lambda store, shard: store.put_bytes(shard, store.get_bytes(shard)[:-512])),
        ("missing shard index", lambda store, shard: store.delete(shard_index_key(shard))),
        ("damaged shard index", lambda store, shard: store.put_bytes(shard_index_key(shard), b'{"format": 1, "sh')),
    ]


@pytest.mark.parametrize("damage", [d for _, d in _damage_each_way()], ids=[n for n, _ in _damage_each_way()])
def test_a_damaged_shard_is_rendered_again_byte_identical(shapes, damage):
    spec, store = shapes
    dataset_id = spec.dataset_id("shapes")
    run_job(spec, store)
    objects = {k: store.get_bytes(k) for k in store.list(f"datasets/{dataset_id}/") if not k.endswith("contact.png")}
    shard = sorted(k for k in objects if k.endswith(".tar"))[0]
    damage(store, shard)
    summary = shards_module.render_shards(spec, store, shard_plan(spec, "shapes"))
    assert summary["written"] == [shard]  # only the damaged one, the rest verified and skipped
    after = {k: store.get_bytes(k) for k in objects}
    manifest = read_manifest(store, f"datasets/{dataset_id}/manifest.json")
    assert {k: v for k, v in after.items() if k.endswith((".tar", ".index.json"))} == \
        {k: v for k, v in objects.items() if k.endswith((".tar", ".index.json"))}
    assert verify_manifest(store, manifest) == []
    assert len(shards_module.render_shards(spec, store, shard_plan(spec, "shapes"))["written"]) == 0


def test_a_damaged_manifest_or_part_record_is_rebuilt_and_named_to_readers(shapes):
    from services.common.errors import IntegrityError

    spec, store = shapes
    dataset_id = spec.dataset_id("shapes")
    key = f"datasets/{dataset_id}/manifest.json"
    run_job(spec, store)
    entries = read_manifest(store, key).entries
    store.put_bytes(key, store.get_bytes(key)[:150])  # truncated
    with pytest.raises(IntegrityError, match=re.escape(key)):
        read_manifest(store, key)
    part = sorted(store.list(f"datasets/{dataset_id}/parts/"))[0]
    store.put_bytes(part, b"{}")  # valid JSON, not an entry
    summary = shards_module.render_shards(spec, store, shard_plan(spec, "shapes"))
    assert len(summary["written"]) == 1  # the shard whose part record was damaged (the manifest did not list it)
    assert read_manifest(store, key).entries == entries
