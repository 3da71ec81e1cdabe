"""Shape recoverability as an evaluation of the spec: the train job fits the listed datasets after render, skips
them when their summary is there, and the report shows per dataset and per class IoU / chamfer / F-score."""

from __future__ import annotations

import os

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

import re
from pathlib import Path

import pytest
import trimesh

from services.common.spec.experiment import parse_spec
from services.common.store import LocalStore
from services.meshgen.api import recoverability_key
from services.render.job import run_job as render_job
from services.report import write_report
from services.train.job import run_job as train_job
from tests.render.meshdata import write_meshes

PARAMS = {"level": 1, "iterations": 8, "log_every": 4, "held_out_views": 2, "views_per_iteration": 0}


def spec_with(outputs=("rgb", "mask"), **recoverability):
    return parse_spec({"name": "t", "seed": 3, "datasets": [
        {"name": "shapes", "family": {"family": "procsynth"}, "classes": 2, "instances_per_class": 1,
         "render": {"image_size": 32, "views_per_instance": 6, "shard_size": 50, "val_fraction": 0.0,
                    "outputs": list(outputs)}}],
        "evaluation": {"recoverability": {"datasets": ["shapes"], "classes": 2, "params": PARAMS, **recoverability}}})


def test_train_job_fits_listed_datasets_and_the_report_shows_them(tmp_path):
    store = LocalStore(tmp_path / "store")
    spec = spec_with()
    write_meshes(store, spec, "shapes", {(0, 0): trimesh.creation.box(), (1, 0): trimesh.creation.icosphere(2)})
    # before the fit the report lists the dataset as not fitted yet
    html = Path(write_report(spec, store)).read_text()
    assert re.search(r'<tr data-dataset="shapes"><td>shapes</td><td>procsynth</td><td colspan="5" class="missing">'
                     r"not fitted yet</td>", html)
    render_job(spec, store)
    summary = train_job(spec, store)
    assert summary["recoverability"]["shapes"]["status"] == "done"
    saved = store.get_json(recoverability_key(spec.dataset_id("shapes")))
    assert set(saved["classes"]) == {"0", "1"} and saved["classes_requested"] == 2
    assert train_job(spec, store)["recoverability"]["shapes"]["status"] == "skipped"  # same params: kept
    html = Path(write_report(spec, store)).read_text()
    row = re.search(r'<tr data-dataset="shapes"><td>shapes</td><td>procsynth</td><td>2</td>\s*<td>([0-9.]+)</td>'
                    r"<td>([0-9.]+)</td><td>([0-9.]+)", html)
    assert row, html[html.find("Shape recoverability"):][:2000]
    assert float(row.group(1)) == pytest.approx(saved["mean_held_out_iou"], abs=1e-3)
    assert float(row.group(2)) == pytest.approx(saved["mean_chamfer"], abs=1e-4)
    assert float(row.group(3)) == pytest.approx(saved["mean_fscore"], abs=1e-3)
    per_class = re.findall(r"<tr><td>(\d)</td><td>([0-9.]+)</td>", html[html.find("recoverability-classes"):])
    assert [(int(c), round(float(v), 3)) for c, v in per_class] == [
        (c, round(saved["classes"][str(c)]["held_out_iou"], 3)) for c in (0, 1)]
    # other parameters: fitted again
    again = spec_with(classes=1)
    assert train_job(again, store)["recoverability"]["shapes"]["status"] == "done"
    assert list(store.get_json(recoverability_key(spec.dataset_id("shapes")))["classes"]) == ["0"]


def test_recoverability_spec_is_checked():
    with pytest.raises(ValueError, match=r"evaluation.recoverability.datasets\[0\]: 'shapes' must be .*mask"):
        spec_with(outputs=("rgb",))
    with pytest.raises(ValueError, match=r"evaluation.recoverability.classes: 5 classes, but dataset 'shapes' has 2"):
        spec_with(classes=5)
    with pytest.raises(ValueError, match=r"unknown dataset 'nope'"):
        spec_with(datasets=["nope"])
    with pytest.raises(ValueError, match="iterations"):
        spec_with(params={"iterations": 0})
