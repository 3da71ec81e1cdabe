"""`flatland run` on every core: the same bytes for 1 and N workers, and a clean, resumable stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from services.common.errors import ObjectNotFoundError
from services.common.spec import parse_spec
from services.common.store import LocalStore
from services.experiment.parallel import merge_summaries
from services.experiment.runner import run_experiment
from services.experiment.workplan import local_worker_count

REPO = Path(__file__).resolve().parents[2]

SPEC = {
    "name": "par",
    "seed": 3,
    "datasets": [
        {"name": "shapes", "family": {"family": "procsynth"}, "classes": 4, "instances_per_class": 2,
         "render": {"image_size": 32, "views_per_instance": 6, "shard_size": 3}},
        {"name": "fr", "family": {"family": "fractal2d", "search_points": 5000, "search_size": 64}, "classes": 3,
         "instances_per_class": 2,
         "fractal_render": {"image_size": 32, "points": 5000, "drawings_per_variant": 2, "shard_size": 5}},
    ],
}


def store_files(root: Path) -> dict[str, bytes]:
    """Every file of a local store; manifests without their ``updated`` time (the one thing that may differ)."""
    files = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if path.name == "manifest.json":
            manifest = json.loads(data)
            manifest.pop("updated", None)
            data = json.dumps(manifest, sort_keys=True).encode()
        files[path.relative_to(root).as_posix()] = data
    return files


def quiet(tmp_path: Path) -> Console:
    return Console(file=open(tmp_path / "console.txt", "a"), width=120)


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory) -> Path:
    """The reference: meshgen and render of SPEC in one process."""
    root = tmp_path_factory.mktemp("one") / "store"
    run_experiment(parse_spec(SPEC), LocalStore(root), stages=["meshgen", "render"], workers=1,
                   console=quiet(root.parent))
    return root


@pytest.mark.slow
def test_two_workers_write_the_same_bytes_as_one(one_worker, tmp_path):
    spec = parse_spec(SPEC)
    assert local_worker_count("render", spec, 2) == 2 and local_worker_count("meshgen", spec, 2) == 2
    outcome = run_experiment(spec, LocalStore(tmp_path / "two"), stages=["meshgen", "render"], workers=2,
                             console=quiet(tmp_path))
    render = outcome["stages"]["render"]
    assert render["workers"] == 2 and render["written"] == render["shards"] == 27 and render["skipped"] == 0
    assert outcome["stages"]["meshgen"]["datasets"]["shapes"]["generated"] == 4
    reference, parallel = store_files(one_worker), store_files(tmp_path / "two")
    assert sorted(parallel) == sorted(reference)
    assert [k for k in reference if reference[k] != parallel[k]] == []


def _run_command(tmp_path):
    """The store, command line and environment of a 2-worker `flatland run` of meshgen and render."""
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    store = tmp_path / "store"
    command = [sys.executable, "-m", "services.cli", "run", str(spec_path), "--store", str(store),
               "--stage", "meshgen", "--stage", "render", "--workers", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYOPENGL_PLATFORM": os.environ.get("PYOPENGL_PLATFORM", "osmesa")}
    return store, command, env


def _nothing_half_written(reference_store, store) -> dict:
    """Every file a stopped run left is one the uninterrupted run also wrote, byte for byte (manifests aside),
    and some are missing; returns the uninterrupted run's files."""
    reference, stopped = store_files(reference_store), store_files(store)
    assert len(stopped) < len(reference)
    assert [k for k in stopped if k not in reference or (stopped[k] != reference[k] and "manifest" not in k)] == []
    return reference


@pytest.mark.slow
def test_ctrl_c_stops_every_worker_and_the_next_run_resumes(one_worker, tmp_path):
    store, command, env = _run_command(tmp_path)
    # Its own process group, as a terminal's foreground job: Ctrl-C reaches the parent and its workers.
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    deadline = time.monotonic() + 240
    parts = []
    while time.monotonic() < deadline and process.poll() is None:
        parts = list(store.glob("datasets/*/parts/*.json"))
        if parts:
            break
        time.sleep(0.05)
    assert parts, "render never finished a shard"
    os.killpg(process.pid, signal.SIGINT)
    output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 130, output
    assert "run the same command again to resume" in output
    reference = _nothing_half_written(one_worker, store)
    # The next run finishes the job: the same store as the uninterrupted run.
    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout.decode() + rerun.stderr.decode()
    assert store_files(store) == reference


@pytest.mark.slow
def test_sigterm_mid_render_stops_every_worker_and_the_next_run_resumes(one_worker, tmp_path):
    """SIGTERM to the `flatland run` process alone (as Kubernetes or systemd stop a service): it stops its
    workers itself, exits, leaves nothing half-written, and the next run ends with the uninterrupted store."""
    import psutil

    store, command, env = _run_command(tmp_path)
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    parent = psutil.Process(process.pid)
    deadline = time.monotonic() + 240
    parts, workers = [], []
    while time.monotonic() < deadline and process.poll() is None:
        parts = list(store.glob("datasets/*/parts/*.json"))
        if parts:  # mid-render: a shard is done; its workers are this process's children running the stage
            workers = [c for c in parent.children() if "spawn_main" in " ".join(c.cmdline())
                       and "resource_tracker" not in " ".join(c.cmdline())]
            break
        time.sleep(0.05)
    assert parts, "render never finished a shard"
    assert len(workers) == 2, [c.cmdline() for c in workers]
    process.send_signal(signal.SIGTERM)  # the parent only: it must stop its workers itself
    output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 130, output
    assert "run the same command again to resume" in output
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == [], f"workers outlived SIGTERM of their parent: {[p.pid for p in alive]}"
    reference = _nothing_half_written(one_worker, store)
    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout.decode() + rerun.stderr.decode()
    assert store_files(store) == reference


def test_a_failing_worker_raises_its_own_error(tmp_path):
    spec = parse_spec(SPEC)  # render before meshgen: every worker finds no meshes
    with pytest.raises(ObjectNotFoundError, match="meshgen"):
        run_experiment(spec, LocalStore(tmp_path / "store"), stages=["render"], workers=2, console=quiet(tmp_path))


def test_worker_counts_are_capped_by_the_work():
    spec = parse_spec(SPEC)
    assert local_worker_count("meshgen", spec, 64) == 4  # the largest meshgen dataset's classes
    assert local_worker_count("render", spec, 64) == 27  # shards
    assert local_worker_count("train", spec, 64) == 1
    assert local_worker_count("neuro", spec, 64) == 1  # no scoring: nothing to split


def test_summaries_of_shares_add_up():
    merged = merge_summaries([
        {"index": 0, "count": 2, "written": 3, "failures": ["a"], "datasets": {"x": {"generated": 1, "dataset_id": "x-1"}},
         "seconds": 2.0},
        {"index": 1, "count": 2, "written": 4, "failures": [], "datasets": {"x": {"generated": 2, "dataset_id": "x-1"}},
         "seconds": 5.0},
    ])
    assert merged == {"count": 2, "workers": 2, "written": 7, "failures": ["a"],
                      "datasets": {"x": {"generated": 3, "dataset_id": "x-1"}}, "seconds": 5.0}


def test_spec_local_workers_is_validated():
    from services.common.errors import SpecError

    assert parse_spec({**SPEC, "local": {"workers": 3}}).local.resolved_workers() == 3
    assert parse_spec(SPEC).local.resolved_workers() >= 1
    with pytest.raises(SpecError, match=r"local\.workers"):
        parse_spec({**SPEC, "local": {"workers": 0}})
