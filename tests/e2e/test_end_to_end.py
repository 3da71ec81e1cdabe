"""A miniature experiment end to end, embedded and through the gRPC services: same results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from services.common.manifest import read_manifest, verify_manifest
from services.experiment.runner import run_experiment
from services.common.server import start_server
from services.common.spec import parse_spec
from services.common.store import LocalStore
from services.train.api import evaluation_id, evaluation_key

TINY = """
name: tiny
seed: 7
datasets:
  - name: shapes
    family: {family: procsynth, v: 1, w: 2}
    classes: 3
    instances_per_class: 1
    render: {image_size: 32, views_per_instance: 8, shard_size: 16, val_fraction: 0.25}
  - name: flat
    family: {family: procsynth, v: 1, w: 2}
    classes: 3
    instances_per_class: 1
    meshes_from: shapes
    render: {image_size: 32, views_per_instance: 8, shard_size: 16, val_fraction: 0.25,
             pose_variation: false, illumination_variation: false}
  - name: ifs
    family: {family: fractal2d, search_points: 5000, search_size: 64}
    classes: 3
    instances_per_class: 2
    fractal_render: {image_size: 32, points: 5000, drawings_per_variant: 2, val_fraction: 0.5, shard_size: 16}
pretrain:
  - {name: net, datasets: [shapes], model: resnet18, input_size: 32, epochs: 1, batch_size: 8, workers: 0}
targets:
  - {name: digits, kind: digits}
transfer:
  - {name: probe, pretrained: [net], targets: [digits], modes: [linear_probe], epochs: 1, batch_size: 64}
neural_data:
  - {name: planted, kind: planted, stimuli: 40, neuroids: 8, repetitions: 2}
scoring:
  - {name: scores, runs: [net], benchmarks: [planted], layers: [layer2, layer4], pls_components: 3, n_splits: 3,
     pca_components: 20, compare_models: false}
evaluation:
  depth_probe:
    - {name: depth, runs: [net], dataset: shapes, pixels_per_image: 16}
"""


def _summary(spec, store) -> dict:
    """What the experiment produced, as comparable values."""
    out = {}
    for d in spec.datasets:
        for prefix in (f"meshes/{spec.dataset_id(d.name)}", f"datasets/{spec.dataset_id(d.name)}"):
            manifest = read_manifest(store, f"{prefix}/manifest.json")
            if manifest is not None:
                assert verify_manifest(store, manifest) == []
                out[prefix] = sorted((e.key, e.sha256) for e in manifest.entries)
    run = spec.run_id("net")
    out["metrics"] = [
        {k: v for k, v in json.loads(line).items() if k not in ("seconds", "images_per_s")}
        for line in store.get_bytes(f"runs/{run}/metrics.jsonl").decode().splitlines()
    ]
    score = store.get_json(f"scores/{run}/planted.json")
    out["scores"] = {region: {layer: v["raw"] for layer, v in layers.items()} for region, layers in score["predictivity"].items()}
    transfer = next(k for k in store.list("runs/") if k.endswith("/transfer.json"))
    out["transfer"] = [(r["source"], r["mode"], r["test_top1"]) for r in store.get_json(transfer)["results"]]
    depth = store.get_json(evaluation_key(evaluation_id(spec, spec.evaluation.depth_probe[0]), "net"))
    out["depth_probe"] = (depth["rmse_m"], depth["baseline_rmse_m"], depth["test_images"])
    return out


@pytest.mark.slow
def test_embedded_and_remote_agree(tmp_path):
    spec = parse_spec(yaml.safe_load(TINY))
    console = Console(file=open(Path(tmp_path, "console.txt"), "w"), width=120)

    embedded = LocalStore(tmp_path / "embedded")
    outcome = run_experiment(spec, embedded, console=console)
    assert set(outcome["timings_s"]) == {"meshgen", "render", "train", "neuro"}
    report = Path(outcome["report"])
    assert report.is_file() and "tiny" in report.read_text()
    # FlatWorld renders the same meshes: no meshes of its own.
    assert read_manifest(embedded, f"meshes/{spec.dataset_id('flat')}/manifest.json") is None

    # A second run finds every stage done.
    again = run_experiment(spec, embedded, console=console)
    assert again["stages"]["render"]["written"] == 0
    assert again["stages"]["meshgen"]["datasets"]["shapes"]["generated"] == 0

    remote_store = LocalStore(tmp_path / "remote")
    server = start_server("all", remote_store)
    try:
        run_experiment(spec, remote_store, console=console, remote=f"127.0.0.1:{server.port}", spec_text=TINY)
    finally:
        server.stop(grace=1.0)

    a, b = _summary(spec, embedded), _summary(spec, remote_store)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == b[key], key
