"""Fitting an ico-sphere to silhouettes or to a mesh (small and fast: 32 px, low levels)."""

from __future__ import annotations

import io
import json
import os

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")  # before anything imports OpenGL

import numpy as np
import pytest
import trimesh
from PIL import Image

from services.common.errors import SpecError
from services.common.spec.meshgen import FitParams
from services.common.store import LocalStore
from services.meshgen.fit import (
    FitError, FitResult, FitStep, fit, fit_key, iter_fit, prepare, target_from_masks, target_from_mesh, write_fit,
)
from services.render import api as render_api

SMALL = dict(level=2, image_size=32, views=8, held_out_views=3, iterations=60, views_per_iteration=0, log_every=20)


def box() -> trimesh.Trimesh:
    return trimesh.creation.box(extents=[1.6, 0.8, 0.8])


def test_fitting_silhouettes_of_a_box_recovers_it():
    params = FitParams(**SMALL)
    target = target_from_mesh(box(), params)
    assert target.masks.shape == (8, 32, 32) and target.held_masks.shape == (3, 32, 32)
    start = fit(target, params.model_copy(update={"iterations": 1}))
    events = list(iter_fit(target, params))
    steps, result = events[:-1], events[-1]
    assert all(isinstance(s, FitStep) for s in steps) and isinstance(result, FitResult)
    assert [s.iteration for s in steps] == [1, 20, 40, 60]
    assert steps[-1].losses["silhouette"] < 0.5 * steps[0].losses["silhouette"]
    m = result.metrics
    assert m["held_out_iou"] > 0.8 and m["held_out_iou"] > start.metrics["held_out_iou"] + 0.1
    assert m["chamfer"] < start.metrics["chamfer"] and 0 <= m["fscore"] <= 1
    # the fitted mesh lives in the target's coordinates: its extent follows the box, not the sphere
    extent = np.ptp(result.mesh.vertices, axis=0)
    assert extent[0] > 1.3 * extent[1]
    assert result.timing["raster_seconds"] > 0 and result.timing["loss_seconds"] > 0


def test_fitting_a_mesh_in_3d_with_chamfer_and_quadric():
    params = FitParams(level=2, iterations=80, target_mode="mesh", held_out_views=0, points=1000, log_every=40,
                       weights={"quadric": 1.0})
    target = target_from_mesh(box(), params)
    assert target.masks is None
    start = fit(target, params.model_copy(update={"iterations": 1}))
    result = fit(target, params)
    assert result.metrics["chamfer"] < 0.3 * start.metrics["chamfer"]
    assert result.metrics["fscore"] > start.metrics["fscore"]
    assert "quadric" in result.history[-1] and "silhouette" not in result.history[-1]


def test_masks_and_records_as_a_lab_would_give_them():
    mesh = box()
    records = render_api.orbit_records(np.linspace(-180, 150, 8), np.linspace(0, 150, 8), image_size=32,
                                       centre=np.zeros(3), radius=1.0)
    masks = render_api.render_masks(mesh, records)
    pngs = []
    for m in masks:
        out = io.BytesIO()
        Image.fromarray((m * 255).astype(np.uint8)).save(out, format="png")
        pngs.append(out.getvalue())
    params, target, fit_id = prepare(dict(SMALL, held_out_views=2), masks_png=pngs, records=json.dumps(records))
    assert len(target.records) == 6 and len(target.held_records) == 2 and fit_id.startswith("fit-")
    assert target.radius == pytest.approx(1.0)
    assert prepare(dict(SMALL, held_out_views=2), masks_png=pngs, records=records)[2] == fit_id  # stable name
    start = fit(target, params.model_copy(update={"iterations": 1}))
    result = fit(target, params)
    assert "chamfer" not in result.metrics  # no true mesh given
    # 6 fitted views from a sparse orbit: the held-out views improve, the fitted ones match
    assert result.metrics["held_out_iou"] > start.metrics["held_out_iou"] + 0.04
    assert result.metrics["train_iou"] > max(0.8, start.metrics["train_iou"] + 0.1)


def test_outputs_in_the_store(tmp_path):
    store = LocalStore(tmp_path / "store")
    params = FitParams(**dict(SMALL, iterations=5, log_every=2))
    result = fit(target_from_mesh(box(), params), params)
    entries = write_fit(store, "fit-test", result, params)
    assert [e.key for e in entries] == [fit_key("fit-test", n) for n in ("mesh.glb", "losses.jsonl", "losses.png",
                                                                      "metrics.json")]
    mesh = trimesh.load(io.BytesIO(store.get_bytes("fits/fit-test/mesh.glb")), file_type="glb", force="mesh")
    assert len(mesh.vertices) == 162  # level-2 ico-sphere
    rows = [json.loads(line) for line in store.get_bytes("fits/fit-test/losses.jsonl").decode().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 4, 5] and all("silhouette" in r for r in rows)
    assert store.get_bytes("fits/fit-test/losses.png")[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = store.get_json("fits/fit-test/metrics.json")
    assert {"held_out_iou", "chamfer", "fscore", "timing", "params"} <= set(metrics)


@pytest.mark.parametrize("kwargs, message", [
    ({}, "either a mesh or masks"),
    ({"mesh": b"glTF", "masks_png": [b"x"]}, "either a mesh or masks"),
    ({"mesh": b"not a mesh", "mesh_format": "glb"}, "mesh: could not read"),
    ({"mesh": b"x", "mesh_format": "fbx"}, "mesh_format"),
    ({"masks_png": [b"x"], "records": "[]"}, "masks_png[0]"),
    ({"masks_png": [], "records": "{}"}, "either"),
])
def test_bad_targets_are_named(kwargs, message):
    with pytest.raises(FitError) as info:
        prepare({}, **kwargs)
    assert message in str(info.value)


def test_masks_records_mismatch_and_bad_params_are_named():
    masks = np.zeros((2, 16, 16), bool)
    masks[:, 4:12, 4:12] = True
    records = render_api.orbit_records([0, 90], [0, 0], image_size=16, centre=np.zeros(3), radius=1.0)
    with pytest.raises(FitError, match="records: 1 records for 2 masks"):
        target_from_masks(masks, records[:1], FitParams())
    with pytest.raises(FitError, match="image_size"):
        target_from_masks(np.zeros((2, 8, 8), bool), records, FitParams())
    with pytest.raises(SpecError, match="params.level"):
        prepare({"level": 9}, mesh=b"x")
    with pytest.raises(SpecError, match="params.optimizer"):
        prepare('{"optimizer": "lbfgs"}', mesh=b"x")


def test_schedule_anneals_sigma_and_decays_the_learning_rate(monkeypatch):
    from services.meshgen.fit import schedule

    params = FitParams(iterations=5, sigma=0.1, sigma_start=1.6, lr=2.0, lr_schedule="cosine")
    sigmas, lrs = zip(*(schedule(params, s) for s in range(1, 6)))
    assert sigmas == pytest.approx([1.6, 0.8, 0.4, 0.2, 0.1])  # geometric: halves each step here
    assert lrs == pytest.approx([2.0, 1.0 + 2 ** -0.5, 1.0, 1.0 - 2 ** -0.5, 0.0])
    assert schedule(FitParams(sigma=0.3), 7) == (0.3, 0.01)  # defaults: constant sigma, Adam's constant lr
    seen = []
    real = render_api.soft_silhouette

    def spy(*args, sigma, **kw):
        seen.append(sigma)
        return real(*args, sigma=sigma, **kw)

    target = target_from_mesh(box(), FitParams(**SMALL))
    monkeypatch.setattr(render_api, "soft_silhouette", spy)
    fit(target, FitParams(**dict(SMALL, iterations=3, sigma_start=0.4, sigma=0.1)))
    assert seen == pytest.approx([0.4, 0.2, 0.1])
