"""Shape recoverability of a rendered dataset: fit classes from their shards' masks, compare with the true meshes."""

from __future__ import annotations

import os

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

import pytest
import trimesh

from services.common.spec.experiment import parse_spec
from services.common.store import LocalStore
from services.meshgen.fit import FitError
from services.meshgen.job import fit_dataset
from services.render.job import run_job
from tests.render.meshdata import write_meshes

PARAMS = {"level": 1, "iterations": 10, "log_every": 5, "held_out_views": 2, "views_per_iteration": 0}


def spec_with(outputs):
    return parse_spec({"name": "t", "seed": 3, "datasets": [
        {"name": "shapes", "family": {"family": "procsynth"}, "classes": 2, "instances_per_class": 1,
         "render": {"image_size": 32, "views_per_instance": 6, "shard_size": 50, "val_fraction": 0.0,
                    "outputs": outputs}}]})


def test_fit_dataset_writes_per_class_fits_and_a_summary(tmp_path):
    store = LocalStore(tmp_path / "store")
    spec = spec_with(["rgb", "mask"])
    write_meshes(store, spec, "shapes", {(0, 0): trimesh.creation.box(), (1, 0): trimesh.creation.icosphere(2)})
    run_job(spec, store)
    summary = fit_dataset(spec, store, "shapes", PARAMS, classes=2)
    dataset_id = spec.dataset_id("shapes")
    assert set(summary["classes"]) == {"0", "1"}
    for cls in ("0", "1"):
        metrics = summary["classes"][cls]
        assert 0 < metrics["held_out_iou"] <= 1 and metrics["chamfer"] > 0 and 0 <= metrics["fscore"] <= 1
        assert store.exists(f"fits/{dataset_id}/0000{cls}/mesh.glb")
    assert store.get_json(f"fits/{dataset_id}/recoverability.json")["mean_chamfer"] == pytest.approx(
        summary["mean_chamfer"])


def test_fit_dataset_command(tmp_path):
    from click.testing import CliRunner

    from services.cli import main

    store = LocalStore(tmp_path / "store")
    spec = spec_with(["rgb", "mask"])
    write_meshes(store, spec, "shapes", {(0, 0): trimesh.creation.box(), (1, 0): trimesh.creation.box()})
    run_job(spec, store)
    path = tmp_path / "spec.yaml"
    path.write_text(spec.model_dump_json())
    args = ["fit-dataset", str(path), "shapes", "--classes", "1", "--store", str(tmp_path / "store")]
    for k, v in PARAMS.items():
        args += ["--set", f"{k}={v}"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "class 0: held-out IoU" in result.stdout and "recoverability.json" in result.stdout


def test_fit_dataset_needs_masks_and_a_rendered_dataset(tmp_path):
    store = LocalStore(tmp_path / "store")
    spec = spec_with(["rgb"])
    with pytest.raises(FitError, match="render it first"):
        fit_dataset(spec, store, "shapes", PARAMS)
    write_meshes(store, spec, "shapes", {(0, 0): trimesh.creation.box(), (1, 0): trimesh.creation.box()})
    run_job(spec, store)
    with pytest.raises(FitError, match="mask"):
        fit_dataset(spec, store, "shapes", PARAMS, classes=1)
