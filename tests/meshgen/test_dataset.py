"""Dataset writer and job: manifest contract, determinism, single-item regeneration, resume, sharding."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import trimesh

from services.common.manifest import read_manifest, verify_manifest
from services.common.spec.experiment import parse_spec
from services.common.store import LocalStore
from services.meshgen.dataset import class_record_key, generate_dataset, manifest_key
from services.meshgen.fractal2d import ifs_variants
from services.meshgen.job import run_job, shard_classes
from services.meshgen.registry import get_family

PROC = {"family": "procsynth", "segments_range": {"low": 8, "high": 12}, "w": 3}
MORPH = {"family": "morphsynth", "base": PROC, "max_vertices": 800, "nystrom_points": 100, "eigen_components": 30}
FRACTAL = {"family": "fractal2d", "search_points": 20000, "search_size": 128}


def _spec(seed: int = 3, classes: int = 3):
    return parse_spec({
        "name": "meshgen-test", "seed": seed,
        "datasets": [
            {"name": "proc", "family": PROC, "classes": classes},
            {"name": "morph", "family": MORPH, "classes": 2},
            {"name": "frac", "family": FRACTAL, "classes": 2},
            {"name": "noise", "family": {"family": "noisescenes"}, "classes": 2},
        ],
    })


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    store = LocalStore(tmp_path_factory.mktemp("store"))
    spec = _spec()
    summary = run_job(spec, store)
    return spec, store, summary


def test_manifest_contract(written):
    spec, store, summary = written
    assert set(summary["datasets"]) == {"proc", "morph", "frac"}  # noisescenes are not meshgen's
    for name, instances in (("proc", 3), ("morph", 3), ("frac", 1)):
        dataset_id = spec.dataset_id(name)
        manifest = read_manifest(store, manifest_key(dataset_id))
        assert manifest.kind == "meshes"
        assert manifest.spec_hash == dataset_id.rsplit("-", 1)[1]
        meta = manifest.metadata
        assert meta["family"] == spec.dataset(name).kind and meta["dataset"] == name and meta["seed"] == 3
        assert meta["classes"] == spec.dataset(name).classes
        assert meta["params"] == spec.dataset(name).family.model_dump(mode="json")
        assert len(manifest.entries) == meta["classes"] * instances
        assert verify_manifest(store, manifest) == []
        for e in manifest.entries:
            assert e.key.startswith(f"meshes/{dataset_id}/{e.class_index:05d}/")
            assert isinstance(e.seed, int) and e.stats


def test_glb_items_load_with_their_stats(written):
    spec, store, _ = written
    manifest = read_manifest(store, manifest_key(spec.dataset_id("morph")))
    entry = manifest.entries[0]
    mesh = trimesh.load(io.BytesIO(store.get_bytes(entry.key)), file_type="glb", force="mesh")
    assert len(mesh.vertices) == entry.stats["vertices"] <= 800
    assert mesh.visual.kind == "vertex" and mesh.visual.vertex_colors[:, :3].std() > 1
    proc = read_manifest(store, manifest_key(spec.dataset_id("proc")))
    for e in proc.entries:
        assert max(e.stats["extents"]) <= 10.0 * max(1.0, e.stats["stretch_factor"])


def test_fractal_class_definition(written):
    spec, store, _ = written
    manifest = read_manifest(store, manifest_key(spec.dataset_id("frac")))
    ifs = json.loads(store.get_bytes(manifest.entries[0].key))
    assert set(ifs) == {"maps", "probs", "filling_rate", "seed"}
    assert ifs["filling_rate"] >= 0.2 and np.isclose(sum(ifs["probs"]), 1.0)
    assert len(ifs_variants(np.asarray(ifs["maps"]), 0.4)) == 25
    assert manifest.metadata["instances_per_class"] == 25


def test_rerun_skips_everything(written):
    spec, store, _ = written
    before = {k: store.checksum(k) for k in store.list("meshes/")}
    summary = run_job(spec, store)
    assert all(d["generated"] == 0 and d["skipped"] == d["classes"] for d in summary["datasets"].values())
    after = {k: store.checksum(k) for k in store.list("meshes/") if not k.endswith("manifest.json")}
    assert all(before[k] == v for k, v in after.items())


def test_deterministic_bytes_and_single_item_regeneration(written, tmp_path):
    spec, store, _ = written
    other = LocalStore(tmp_path / "other")
    generate_dataset(_spec(), "proc", other, classes=[1])  # one class alone, in a fresh store
    for instance in range(3):
        key = f"meshes/{spec.dataset_id('proc')}/00001/{instance}.glb"
        assert other.get_bytes(key) == store.get_bytes(key)
    # one (class, instance) alone, from the family, matches the stored bytes and manifest seed
    manifest = read_manifest(store, manifest_key(spec.dataset_id("morph")))
    entry = next(e for e in manifest.entries if e.class_index == 1 and e.instance == 2)
    item = get_family("morphsynth").generate_item(spec.dataset("morph").family, 3, 1, 2)
    assert item.data == store.get_bytes(entry.key) and item.seed == entry.seed


def test_other_seed_gives_other_meshes(written, tmp_path):
    spec, store, _ = written
    other_spec = _spec(seed=4, classes=1)
    other = LocalStore(tmp_path / "s4")
    generate_dataset(other_spec, "proc", other)
    a = store.get_bytes(f"meshes/{spec.dataset_id('proc')}/00000/0.glb")
    b = other.get_bytes(f"meshes/{other_spec.dataset_id('proc')}/00000/0.glb")
    assert a != b


def test_shards_partition_classes_and_merge_into_one_manifest(tmp_path):
    spec = _spec(classes=5)
    store = LocalStore(tmp_path / "store")
    seen = []
    for index in range(2):
        run_job(spec.model_copy(update={"datasets": spec.datasets[:1]}), store, index=index, count=2,
                progress=lambda task, done, total: seen.append((task, done, total)))
    manifest = read_manifest(store, manifest_key(spec.dataset_id("proc")))
    assert sorted({e.class_index for e in manifest.entries}) == [0, 1, 2, 3, 4]
    assert seen[-1] == ("meshgen:proc", 2, 2) and seen[0] == ("meshgen:proc", 1, 3)
    assert shard_classes(5, 1, 2) == [1, 3]
    with pytest.raises(ValueError, match="index"):
        shard_classes(5, 2, 2)


def test_class_stored_but_missing_from_manifest_is_merged_not_regenerated(tmp_path):
    spec = _spec(classes=2)
    store = LocalStore(tmp_path / "store")
    generate_dataset(spec, "proc", store)
    key = manifest_key(spec.dataset_id("proc"))
    manifest = read_manifest(store, key)
    manifest.entries = [e for e in manifest.entries if e.class_index == 0]  # a lost manifest update
    store.put_bytes(key, manifest.model_dump_json().encode())
    assert store.exists(class_record_key(spec.dataset_id("proc"), 1))
    summary = generate_dataset(spec, "proc", store)
    assert summary["generated"] == 0 and summary["skipped"] == 2
    assert len(read_manifest(store, key).entries) == 6


def test_bytes_identical_in_a_fresh_process(written):
    """GLB export carries no timestamps or process state: another interpreter writes the same bytes."""
    import hashlib
    import subprocess
    import sys

    spec, store, _ = written
    code = (
        "import hashlib, json, sys\n"
        "from services.meshgen.registry import get_family\n"
        f"params = json.loads({json.dumps(json.dumps(MORPH))!r})\n"
        "item = get_family('morphsynth').generate_item(params, 3, 0, 1)\n"
        "print(hashlib.sha256(item.data).hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    stored = store.get_bytes(f"meshes/{spec.dataset_id('morph')}/00000/1.glb")
    assert out.stdout.strip() == hashlib.sha256(stored).hexdigest()


@pytest.mark.parametrize("how", ["flip", "truncate", "delete"])
def test_a_damaged_listed_mesh_is_made_again_byte_identical(tmp_path, how):
    spec = _spec(classes=2)
    store = LocalStore(tmp_path / "store")
    generate_dataset(spec, "proc", store)
    key = manifest_key(spec.dataset_id("proc"))
    originals = {e.key: store.get_bytes(e.key) for e in read_manifest(store, key).entries}
    victim = sorted(k for k in originals if "/00001/" in k)[0]
    data = originals[victim]
    if how == "flip":
        store.put_bytes(victim, data[:40] + bytes([data[40] ^ 0x10]) + data[41:])
    elif how == "truncate":
        store.put_bytes(victim, data[: len(data) // 2])
    else:
        store.delete(victim)
    summary = generate_dataset(spec, "proc", store)
    assert summary["generated"] == 1 and summary["skipped"] == 1  # class 1 made again, class 0 verified
    assert {k: store.get_bytes(k) for k in originals} == originals
    assert verify_manifest(store, read_manifest(store, key)) == []


def test_a_damaged_mesh_manifest_is_named_to_readers_and_rebuilt_by_meshgen(tmp_path):
    from services.common.errors import IntegrityError

    spec = _spec(classes=2)
    store = LocalStore(tmp_path / "store")
    generate_dataset(spec, "proc", store)
    key = manifest_key(spec.dataset_id("proc"))
    entries = read_manifest(store, key).entries
    store.put_bytes(key, store.get_bytes(key)[:-40])  # truncated
    with pytest.raises(IntegrityError, match=f"{key}: damaged manifest"):
        read_manifest(store, key)
    summary = generate_dataset(spec, "proc", store)
    assert summary["generated"] == 0  # rebuilt from the verified class.json records, nothing regenerated
    assert read_manifest(store, key).entries == entries
