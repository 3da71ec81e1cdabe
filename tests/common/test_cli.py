"""The `flatland` CLI as a newcomer meets it: validate, schema, errors, job index checks."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from services.cli import main

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "experiments" / "quickstart.yaml"


def test_validate_good():
    result = CliRunner().invoke(main, ["validate", str(QUICKSTART)])
    assert result.exit_code == 0, result.output
    assert "valid experiment 'quickstart'" in result.output
    assert "procsynth-" in result.output


def test_validate_bad_names_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(QUICKSTART.read_text().replace("views_per_instance: 12", "views_per_instance: zero", 1))
    result = CliRunner().invoke(main, ["validate", str(bad)])
    assert result.exit_code == 2
    assert "datasets[0].render.views_per_instance" in result.output
    assert "'zero'" in result.output


def test_validate_missing_file(tmp_path):
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "spec file not found" in result.output


def test_schema_is_json_schema(tmp_path):
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert "datasets" in schema["properties"]
    out = tmp_path / "schema.json"
    assert CliRunner().invoke(main, ["schema", "-o", str(out)]).exit_code == 0
    assert json.loads(out.read_text()) == schema


def test_job_index_out_of_range(tmp_path):
    result = CliRunner().invoke(
        main, ["job", "meshgen", "--spec", str(QUICKSTART), "--index", "3", "--count", "2", "--store", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "job index 3 is not in 0..1" in result.output


def test_bad_store_url(tmp_path):
    result = CliRunner().invoke(main, ["job", "meshgen", "--spec", str(QUICKSTART), "--store", "ftp://x/y"])
    assert result.exit_code == 2
    assert "unsupported store URL" in result.output


def test_job_before_its_inputs_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["job", "render", "--spec", str(QUICKSTART), "--store", str(tmp_path)])
    assert result.exit_code == 1
    assert "run meshgen for dataset 'procsynth' first" in result.output
    assert "Traceback" not in result.output


def test_serve_passes_its_worker_and_call_limit_flags_to_the_server(tmp_path, monkeypatch):
    import services.common.server as server
    from services.common.spec.local import available_cores

    seen = []

    def fake_start_server(stage, store, **options):
        seen.append((stage, options))
        raise OSError("not starting in this test")

    monkeypatch.setattr(server, "start_server", fake_start_server)
    store = ["--store", str(tmp_path / "store")]
    result = CliRunner().invoke(main, ["serve", "render", *store, "--workers", "3", "--max-work-calls", "2",
                                       "--max-streams", "5", "--max-spec-calls", "1"])
    assert result.exit_code == 1 and "not starting" in result.output
    assert seen[-1][0] == "render"
    assert {k: seen[-1][1][k] for k in ("workers", "max_workers", "max_streams", "max_spec_calls")} == {
        "workers": 3, "max_workers": 2, "max_streams": 5, "max_spec_calls": 1}
    CliRunner().invoke(main, ["serve", "render", *store])  # defaults: every core, 8 / 16 / 4 calls
    assert {k: seen[-1][1][k] for k in ("workers", "max_workers", "max_streams", "max_spec_calls")} == {
        "workers": available_cores(), "max_workers": 8, "max_streams": 16, "max_spec_calls": 4}
    bad = CliRunner().invoke(main, ["serve", "render", *store, "--max-streams", "0"])
    assert bad.exit_code == 2 and "--max-streams" in bad.output
