"""`flatland wait`: each stage waits for its inputs, and lost manifest updates are healed."""

from __future__ import annotations

from pathlib import Path

import yaml

from services.common.manifest import read_manifest, write_manifest
from services.experiment.readiness import missing_inputs
from services.common.spec import parse_spec
from services.common.store import LocalStore
from services.meshgen.job import run_job as meshgen_job

REPO = Path(__file__).resolve().parents[2]


def tiny_spec():
    data = yaml.safe_load((REPO / "experiments" / "quickstart.yaml").read_text())
    data["datasets"] = [
        {"name": "shapes", "family": {"family": "procsynth", "v": 1, "w": 1}, "classes": 3,
         "render": {"image_size": 32, "views_per_instance": 2, "shard_size": 4}},
    ]
    data["pretrain"] = [{"name": "net", "datasets": ["shapes"], "model": "resnet18", "input_size": 32, "epochs": 1}]
    data["transfer"], data["scoring"], data["evaluation"] = [], [], {}
    return parse_spec(data)


def test_render_waits_for_meshes_and_heals_lost_classes(tmp_path):
    spec, store = tiny_spec(), LocalStore(tmp_path)
    assert missing_inputs("meshgen", spec, store) == []
    assert missing_inputs("render", spec, store) == [f"meshes/{spec.dataset_id('shapes')}/manifest.json (3 of 3 classes)"]
    # Two workers: each writes its own classes.
    meshgen_job(spec, store, index=0, count=2)
    assert "(1 of 3 classes)" in missing_inputs("render", spec, store)[0]
    meshgen_job(spec, store, index=1, count=2)
    assert missing_inputs("render", spec, store) == []
    # A concurrent read-then-write dropped class 1 from the manifest: the check heals it.
    key = f"meshes/{spec.dataset_id('shapes')}/manifest.json"
    manifest = read_manifest(store, key)
    manifest.entries = [e for e in manifest.entries if e.class_index != 1]
    write_manifest(store, key, manifest)
    assert missing_inputs("render", spec, store) == []
    assert {e.class_index for e in read_manifest(store, key).entries} == {0, 1, 2}


def test_train_and_neuro_wait(tmp_path):
    spec, store = tiny_spec(), LocalStore(tmp_path)
    missing = missing_inputs("train", spec, store)
    assert len(missing) == 1 and "shards)" in missing[0]
    assert missing_inputs("neuro", spec, store) == []  # nothing is scored in this spec
