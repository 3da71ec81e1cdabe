"""experiments/noise-segmentation-mini.yaml end to end: noise scenes -> segmentation pre-training -> transfer to
tiny COCO and VOC layouts beside the scratch baseline -> the report's segmentation section."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from services.common.spec import load_spec
from services.common.store import LocalStore
from services.experiment.runner import run_experiment
from tests.train.segdata import write_coco, write_voc

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings(  # torchvision 0.29's decode_image deprecation, known (docs/train-stage.md)
    "ignore:The image decoding and encoding capabilities of TorchVision are deprecated:DeprecationWarning")


def test_the_miniature_noise_segmentation_study_runs_end_to_end(tmp_path):
    spec = load_spec(REPO / "experiments" / "noise-segmentation-mini.yaml")
    write_coco(tmp_path / "coco", train=6, val=3, extras=False)
    write_voc(tmp_path / "voc", train=6, val=3, size=(40, 32))
    paths = {"coco-mini": str(tmp_path / "coco"), "voc-mini": str(tmp_path / "voc" / "VOCdevkit")}
    spec = spec.model_copy(update={"targets": [t.model_copy(update={"path": paths[t.name]}) for t in spec.targets]})
    store = LocalStore(tmp_path / "store")
    run_experiment(spec, store, console=Console(file=io.StringIO()))

    dataset = spec.dataset_id("noise-scenes")
    assert store.get_json(f"datasets/{dataset}/manifest.json")["metadata"]["splits"] == {"train": 24, "val": 8}
    run = f"runs/{spec.run_id('seg-noise')}"
    records = [json.loads(line) for line in store.get_bytes(f"{run}/metrics.jsonl").decode().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1] and records[-1]["val_samples"] == 8
    for name in ("iou_macro", "iou_micro", "pixel_accuracy", "f1_macro"):
        low, high = records[-1][f"val_{name}_ci"]
        assert low <= records[-1][f"val_{name}"] <= high
    assert store.exists(f"{run}/examples.png") and store.exists(f"{run}/curves.png")

    transfer = next(k for k in store.list("runs/") if k.endswith("/transfer.json"))
    results = store.get_json(transfer)["results"]
    assert sorted((r["source"], r["target"]) for r in results) == [
        ("scratch", "coco-mini"), ("scratch", "voc-mini"), ("seg-noise", "coco-mini"), ("seg-noise", "voc-mini")]
    for r in results:
        assert r["metric"] == "iou_macro" and r["test_score"] == r["test_segmentation"]["iou_macro"]
        assert r["segmentation_model"] == "lraspp_mobilenet_v3_large" and store.exists(r["examples"])
        assert r["test_samples"] == 3 and 0 <= r["test_segmentation"]["pixel_accuracy"] <= 1
    assert {r["train_samples"] for r in results} == {6}

    report = next(k for k in store.list("reports/") if k.endswith("report.html"))
    html = store.get_bytes(report).decode()
    assert "<h2>Segmentation</h2>" in html and "Segmentation transfer" in html
    assert html.count("image / label / prediction") >= 5  # pre-training + 4 transfers
    assert "Δ vs scratch" in html and "mIoU" in html
