"""The experiment spec: validation names the bad field; hashes are stable and sensitive."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from services.common.errors import SpecError
from services.common.spec import ExperimentSpec, content_hash, json_schema, load_spec, parse_spec

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "experiments" / "quickstart.yaml"


@pytest.fixture()
def quick() -> dict:
    return yaml.safe_load(QUICKSTART.read_text())


def test_quickstart_is_valid():
    spec = load_spec(QUICKSTART)
    assert spec.name == "quickstart"
    kinds = {d.kind for d in spec.datasets}
    assert {"procsynth", "morphsynth", "fractal2d"} <= kinds
    flat = spec.dataset("flatworld")
    assert not flat.render.pose_variation and not flat.render.illumination_variation
    assert spec.mesh_dataset_id("flatworld") == spec.dataset_id("procsynth")


@pytest.mark.parametrize(
    "mutate, field, why",
    [
        (lambda s: s["datasets"][0]["family"].update(v=0), "datasets[0].family.procsynth.v", "greater than or equal to 1"),
        (lambda s: s["datasets"][0].update(classes=-3), "datasets[0].classes", "greater than or equal to 1"),
        (lambda s: s["datasets"][0]["family"].update(family="cubes"), "datasets[0].family", "does not match any of the expected tags"),
        (lambda s: s["datasets"][0]["render"].update(image_sise=64), "datasets[0].render.image_sise", "unknown field"),
        (lambda s: s["pretrain"][0].update(datasets=["nope"]), "pretrain[0].datasets", "unknown dataset 'nope'"),
        (lambda s: s["datasets"][0]["family"].update(max_size=0.1), "datasets[0].family.procsynth", "no shape could ever be accepted"),
        (lambda s: s["datasets"][3]["family"].update(filling_rate=1.5), "datasets[3].family.fractal2d.filling_rate", "less than 1"),
        (lambda s: s["datasets"][3]["family"].update(filling_rate=0.99), "datasets[3].family.fractal2d",
         "filling_rate (0.99) can never be reached"),
        (lambda s: s["datasets"][3]["fractal_render"].update(pad=200), "datasets[3].fractal_render", "pad (200) must be less than half"),
        (lambda s: s.update(seed="abc"), "seed", "valid integer"),
        (lambda s: s["store"].update(url="s3://key:secret@host/bucket"), "store", "must not contain credentials"),
        (lambda s: s["datasets"][1].update(meshes_from="missing"), "datasets[1].meshes_from", "not another dataset"),
        (lambda s: s["scoring"].append({**s["scoring"][0], "name": "again", "pls_components": 5}), "scoring[1]",
         "run 'net3d' on benchmark 'planted-it' is already scored by scoring[0] ('quick-scores')"),
        (lambda s: s["scoring"][0].update(splits="file"), "scoring[0]", "splits 'file' needs a `split_file`"),
        (lambda s: s["scoring"][0].update(split_file="splits.json"), "scoring[0]", "split_file is given but splits is 'stratified_kfold'"),
        (lambda s: s["neural_data"][0].update(time_window_ms=[70, 170]), "neural_data[0]", "time_window_ms needs kind 'file'"),
        (lambda s: s["neural_data"].append({"name": "rec", "kind": "file", "path": "r.h5", "time_window_ms": [170, 70]}),
         "neural_data[1]", "must be [start, end] with end > start"),
    ],
)
def test_bad_field_is_named(quick, mutate, field, why):
    bad = copy.deepcopy(quick)
    mutate(bad)
    with pytest.raises(SpecError) as info:
        parse_spec(bad, "bad.yaml")
    message = str(info.value)
    assert field in message, message
    assert why in message, message


def test_missing_required_field(quick):
    del quick["name"]
    with pytest.raises(SpecError, match=r"name: field required"):
        parse_spec(quick)


def test_not_a_mapping():
    with pytest.raises(SpecError, match="must be a mapping"):
        parse_spec(["a", "b"])


def test_load_spec_errors(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(broken)


def test_hash_stable_and_sensitive(quick):
    a = parse_spec(quick)
    b = parse_spec(copy.deepcopy(quick))
    assert content_hash(a) == content_hash(b)
    assert a.dataset_id("procsynth") == b.dataset_id("procsynth")
    # Writing a default explicitly changes nothing...
    explicit = copy.deepcopy(quick)
    explicit["datasets"][0]["family"]["v"] = 3
    assert parse_spec(explicit).dataset_id("procsynth") == a.dataset_id("procsynth")
    # ...changing a value changes the dataset and every run that uses it, not the others.
    changed = copy.deepcopy(quick)
    changed["datasets"][0]["render"]["views_per_instance"] = 5
    c = parse_spec(changed)
    assert c.dataset_id("procsynth") != a.dataset_id("procsynth")
    assert c.run_id("net3d") != a.run_id("net3d")
    assert c.dataset_id("fractals") == a.dataset_id("fractals")
    assert c.run_id("net2d") == a.run_id("net2d")


def test_hash_is_pinned(quick):
    # The hash is part of store names: an accidental change would orphan every stored dataset.
    spec = ExperimentSpec(name="pin", seed=1)
    assert content_hash(spec) == content_hash(ExperimentSpec.model_validate({"name": "pin", "seed": 1}))
    assert len(content_hash(spec)) == 10


def test_json_schema_describes_every_field():
    schema = json_schema()
    assert schema["title"] == "Beyond Flatland experiment spec"
    defs = schema["$defs"]
    assert {"ProcSynthParams", "MorphSynthParams", "Fractal2DParams", "RenderSettings"} <= set(defs)
    undocumented = [
        f"{name}.{field}"
        for name, d in defs.items()
        for field, prop in d.get("properties", {}).items()
        if "description" not in prop and field not in ("family", "dist", "kind", "name", "low", "high")
    ]
    assert not undocumented, f"fields without a description: {undocumented}"


def test_spec_reference_is_current():
    from services.common.spec.reference import REFERENCE, render_reference

    assert REFERENCE.read_text() == render_reference(), (
        "docs/spec-reference.md is stale: run `python -m services.common.spec.reference`"
    )
