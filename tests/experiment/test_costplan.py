"""`flatland plan`: the store size of every dataset, from measured bytes per sample."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from services.cli import main
from services.common.spec import parse_spec
from services.experiment.costplan import MEASURED, plan_experiment

MEASURED_FIGURES = {"figures": {
    "e2e.image_size": 224, "e2e.bytes_per_sample.rgb.png": 8000, "e2e.bytes_per_sample.depth.png": 13000,
    "e2e.bytes_per_sample.seg.png": 2000, "e2e.bytes_per_sample.mask.png": 2000, "e2e.bytes_per_sample.json": 2400,
    "e2e.rgb.png.bytes": 8000, "e2e.rgb.webp.bytes": 3000,
}, "machine": "test"}


def spec(**render):
    return parse_spec({"name": "p", "datasets": [
        {"name": "d", "family": {"family": "procsynth"}, "classes": 10,
         "render": {"views_per_instance": 10, **render}}]})


def test_store_size_follows_outputs_format_and_size():
    full = plan_experiment(spec(), MEASURED_FIGURES)["datasets"][0]
    images = full.images
    # 4 image members + record, 6 members' tar headers
    assert full.store_bytes == pytest.approx(images * (8000 + 13000 + 2000 + 2000 + 2400 + 6 * 768))
    rgb_only = plan_experiment(spec(outputs=["rgb"]), MEASURED_FIGURES)["datasets"][0]
    assert rgb_only.store_bytes == pytest.approx(images * (8000 + 2400 + 3 * 768))
    webp = plan_experiment(spec(outputs=["rgb"], rgb_format="webp"), MEASURED_FIGURES)["datasets"][0]
    assert webp.store_bytes == pytest.approx(images * (3000 + 2400 + 3 * 768))
    small = plan_experiment(spec(image_size=112, outputs=["rgb"]), MEASURED_FIGURES)["datasets"][0]
    assert small.store_bytes == pytest.approx(images * (2000 + 2400 + 3 * 768))
    assert plan_experiment(spec(), MEASURED_FIGURES)["store_bytes"] == full.store_bytes


def test_noise_scenes_are_sized_from_the_noise_scene_measurement():
    noise = parse_spec({"name": "p", "datasets": [
        {"name": "n", "classes": 3, "family": {"family": "noisescenes", "scenes": 100, "image_size": 256}}]})
    figures = {"figures": {**MEASURED_FIGURES["figures"], "render.noisescenes_image_size": 512,
                           "render.noisescenes_bytes_per_sample.rgb.png": 160_000,
                           "render.noisescenes_bytes_per_sample.seg.png": 6_000,
                           "render.noisescenes_bytes_per_sample.json": 5_000}}
    planned = plan_experiment(noise, figures)["datasets"][0]
    assert planned.images == 100  # rgb and seg at a quarter of the measured area, record as measured
    assert planned.store_bytes == pytest.approx(100 * ((160_000 + 6_000) / 4 + 5_000 + 4 * 768))
    # without the noise-scene figures the procsynth measurement is scaled (the older estimate)
    older = plan_experiment(noise, MEASURED_FIGURES)["datasets"][0]
    assert older.store_bytes == pytest.approx(100 * ((8000 + 2000) * (256 / 224) ** 2 + 2400 + 4 * 768))


def test_unmeasured_store_size_is_said_so():
    plan = plan_experiment(spec(), {"figures": {}})
    assert plan["datasets"][0].store_bytes is None and plan["store_bytes"] is None


@pytest.mark.skipif(not MEASURED.exists(), reason="no benchmarks/measured.json")
def test_plan_command_prints_the_store_size(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("name: p\ndatasets:\n  - name: d\n    family: {family: procsynth}\n    classes: 10\n")
    result = CliRunner().invoke(main, ["plan", str(path)])
    assert result.exit_code == 0, result.output
    assert "store" in result.output and ("MB" in result.output or "GB" in result.output)
