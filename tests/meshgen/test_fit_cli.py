"""`flatland fit` on a mesh file and on a folder of masks + records (an unpacked render shard's layout)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

import numpy as np
import trimesh
from click.testing import CliRunner
from PIL import Image

from services.cli import main
from services.render import api as render_api

SETS = ["--set", "level=1", "--set", "image_size=24", "--set", "views=6", "--set", "held_out_views=2",
        "--set", "iterations=8", "--set", "log_every=4"]


def test_fit_a_mesh_file(tmp_path):
    path = tmp_path / "box.obj"
    trimesh.creation.box().export(path)
    result = CliRunner().invoke(main, ["fit", str(path), "--store", str(tmp_path / "store"), *SETS])
    assert result.exit_code == 0, result.output
    keys = [line for line in result.stdout.splitlines() if line.startswith("fits/")]
    assert [k.rsplit("/", 1)[1] for k in keys] == ["mesh.glb", "losses.jsonl", "losses.png", "metrics.json"]
    metrics = json.loads((tmp_path / "store" / keys[-1]).read_text())
    assert metrics["iterations"] == 8 and "held_out_iou" in metrics and "chamfer" in metrics


def test_fit_a_folder_of_shard_masks_and_records(tmp_path):
    records = render_api.orbit_records(np.linspace(-180, 120, 6), np.linspace(0, 150, 6), image_size=24,
                                       centre=np.zeros(3), radius=1.0)
    masks = render_api.render_masks(trimesh.creation.box(), records)
    folder = tmp_path / "masks"
    folder.mkdir()
    for i, (record, mask) in enumerate(zip(records, masks)):
        Image.fromarray((mask * 255).astype(np.uint8)).save(folder / f"00000_0_{i:05d}.mask.png")
        (folder / f"00000_0_{i:05d}.json").write_text(json.dumps(record))
    result = CliRunner().invoke(main, ["fit", str(folder), "--store", str(tmp_path / "store"), *SETS])
    assert result.exit_code == 0, result.output
    metrics_key = [line for line in result.stdout.splitlines() if line.endswith("metrics.json")][0]
    metrics = json.loads((tmp_path / "store" / metrics_key).read_text())
    assert metrics["held_out_views"] == 2 and "chamfer" not in metrics


def test_fit_bad_input_exits_2_naming_it(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    result = CliRunner().invoke(main, ["fit", str(folder), "--store", str(tmp_path / "s")])
    assert result.exit_code == 2 and "no mask PNGs" in result.output
    path = tmp_path / "box.obj"
    trimesh.creation.box().export(path)
    result = CliRunner().invoke(main, ["fit", str(path), "--store", str(tmp_path / "s"), "--set", "level=99"])
    assert result.exit_code == 2 and "params.level" in result.output
