"""The HTML report opens in a real headless browser without errors and its images load."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.common.spec import load_spec
from services.common.store import LocalStore
from services.report import write_report

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _png(seed: int, size=(48, 32)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def open_in_chromium(path: str | Path, tmp_path: Path) -> tuple[str, str]:
    """Load a page in headless Chromium; return (DOM after load, browser log)."""
    proc = subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
            "--virtual-time-budget=5000", "--dump-dom", Path(path).as_uri(),
        ],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr


@pytest.fixture()
def store_with_results(tmp_path):
    spec = load_spec(REPO / "experiments" / "quickstart.yaml")
    store = LocalStore(tmp_path / "store")
    for i, d in enumerate(spec.datasets):
        store.put_bytes(f"datasets/{spec.dataset_id(d.name)}/contact-sheet.png", _png(i))
    run = spec.run_id("net3d")
    store.put_bytes(f"runs/{run}/curves.png", _png(10))
    store.put_bytes(f"runs/{run}/filters.png", _png(11))
    store.put_bytes(f"runs/{run}/metrics.jsonl", b'{"epoch": 1, "val_top1": 0.5}\n{"epoch": 2, "val_top1": 0.75}\n')
    store.put_bytes(f"scores/{run}/planted-it-predictivity.png", _png(12))
    store.put_json(
        f"scores/{run}/planted-it.json",
        {
            "benchmark": "planted-it", "data": {"synthetic": True}, "best_layer": {"IT": "layer3"},
            "ceiling": {"IT": {"median": 0.7}}, "rsa": {"IT": {"layer3": 0.31}},
            "predictivity": {"IT": {"layer2": {"raw": 0.41, "r_over_ceiling": 0.59}, "layer3": {"raw": 0.52, "r_over_ceiling": 0.74}}},
            "figures": [f"scores/{run}/planted-it-predictivity.png"],
        },
    )
    from services.train.api import evaluation_id, evaluation_key

    sb = evaluation_id(spec, spec.evaluation.shape_bias[0])
    store.put_json(evaluation_key(sb, "net3d"), {"shape_bias": 0.8, "ci": [0.7, 0.9], "images": 48, "shape": 24,
                                                  "texture": 6, "other": 18, "classifier": "head", "confidence": 0.95})
    store.put_json(evaluation_key(sb, "net2d"), {"shape_bias": 0.25, "ci": [0.1, 0.4], "images": 48, "shape": 5,
                                                  "texture": 15, "other": 28, "classifier": "probe", "confidence": 0.95})
    dp = evaluation_id(spec, spec.evaluation.depth_probe[0])
    store.put_json(evaluation_key(dp, "net3d"), {"rmse_m": 0.123, "baseline_rmse_m": 0.456, "rmse_image_mean_m": 0.11,
                                                  "abs_rel": 0.01, "layer": "layer4", "test_images": 24})
    from services.meshgen.api import recoverability_key

    first = spec.datasets[0]
    store.put_json(recoverability_key(spec.dataset_id(first.name)), {
        "dataset": first.name, "mean_held_out_iou": 0.875, "mean_chamfer": 0.0123, "mean_fscore": 0.61,
        "params": {"fscore_threshold": 0.05, "iterations": 300, "level": 4},
        "classes": {"1": {"held_out_iou": 0.85, "train_iou": 0.86, "chamfer": 0.0146, "fscore": 0.6, "fit_seconds": 70.2},
                    "0": {"held_out_iou": 0.9, "train_iou": 0.91, "chamfer": 0.01, "fscore": 0.62, "fit_seconds": 71.0}}})
    store.put_json(
        "runs/digits-transfer-abc/transfer.json",
        {"results": [
            {"source": "net3d", "target": "digits", "mode": "finetune", "test_top1": 0.9},
            {"source": "scratch", "target": "digits", "mode": "finetune", "test_top1": 0.8},
        ]},
    )
    return spec, store


def test_report_contents(store_with_results):
    spec, store = store_with_results
    path = write_report(spec, store, timings={"meshgen": 1.5, "render": 2.0})
    html = Path(path).read_text()
    assert html.count("data:image/png;base64,") == len(spec.datasets) + 3
    assert "75.0%" in html  # final val top-1 of net3d
    assert "90.0% (+10.0)" in html  # transfer against from-scratch
    assert re.search(r'<tr style="font-weight:bold"><td>layer3</td><td>0.520</td>', html)  # best layer
    assert "synthetic planted benchmark" in html
    # shape bias per run as bars with intervals; depth-probe RMSE per run (net2d not probed yet)
    assert re.search(r'<rect class="bias-bar" data-run="net3d" data-value="0.8" x="110" y="5" width="336.0"', html)
    assert html.count('class="bias-ci"') == 2 and "0.700–0.900" in html and "24 / 6 / 18" in html
    assert re.search(r"<td>net3d</td><td>layer4</td><td>0.123</td><td>0.456</td>", html)
    assert re.search(r'<td>net2d</td><td colspan="6" class="missing">not evaluated yet</td>', html)
    # shape recoverability: the dataset with a summary, its mean and its classes in order
    first = spec.datasets[0].name
    assert re.search(rf'<tr data-dataset="{first}"><td>{first}</td><td>[a-z0-9]+</td><td>2</td>\s*<td>0.875</td>'
                     r"<td>0.0123</td><td>0.610 <small>@0.05</small></td>", html)
    assert re.findall(r"<tr><td>(\d)</td><td>([0-9.]+)</td><td>[0-9.]+</td><td>([0-9.]+)</td>", html) == [
        ("0", "0.900", "0.0100"), ("1", "0.850", "0.0146")]
    report = json.loads(Path(path).with_name("report.json").read_text())
    assert [d["name"] for d in report["recoverability"]] == [first]
    assert report["timings"][-1]["stages_s"] == {"meshgen": 1.5, "render": 2.0}
    assert "src" not in json.dumps(report["datasets"])  # images stay out of the JSON
    # A second report keeps the first run's timings.
    write_report(spec, store, timings={"meshgen": 0.1})
    report = json.loads(Path(path).with_name("report.json").read_text())
    assert len(report["timings"]) == 2


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-packages.txt lists it)")
def test_report_renders_in_browser(store_with_results, tmp_path):
    spec, store = store_with_results
    path = write_report(spec, store)
    dom, log = open_in_chromium(path, tmp_path)
    body = re.search(r"<body[^>]*>", dom).group(0)
    loaded = int(re.search(r'data-images-loaded="(\d+)"', body).group(1))
    broken = int(re.search(r'data-images-broken="(\d+)"', body).group(1))
    assert broken == 0
    assert loaded == len(spec.datasets) + 3
    # the bars as the browser laid them out: width / axis width = the shape bias of each run
    bars = dict(item.split("=") for item in re.search(r'data-shape-bias-bars="([^"]*)"', body).group(1).split(","))
    assert {run: float(v) for run, v in bars.items()} == {"net3d": 0.8, "net2d": 0.25}
    assert "Uncaught" not in log, log[-2000:]
