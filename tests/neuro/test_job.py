"""End to end: the neuro job scores two finished runs against a planted benchmark, resumes, and names missing runs."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from services.common.errors import IntegrityError, ObjectNotFoundError
from services.common.store import LocalStore
from services.neuro.job import run_job
from services.neuro.planted import planted_key
from services.neuro.scoring import checkpoint_key, compare_models, score_run
from tests.neuro.conftest import finish_run


def test_job_scores_runs_writes_figures_and_resumes(finished_store, tiny_spec):
    store = finished_store
    events = []
    summary = run_job(tiny_spec, store, progress=lambda task, done, total: events.append((task, done, total)))
    assert summary["tasks"] == 3 and summary["computed"] == 3 and summary["skipped"] == 0  # 2 scores + 1 comparison
    assert events[-1] == ("neuro", 3, 3)
    assert {task for task, _, _ in events} == {"neuro"}  # one progress bar for the stage
    assert [done for _, done, _ in events] == sorted(done for _, done, _ in events)
    assert store.exists(planted_key(tiny_spec.neural_data[0]))

    run_id = tiny_spec.run_id("run-a")
    record = store.get_json(f"scores/{run_id}/planted.json")
    json.dumps(record)  # JSON-able all the way down
    layers = record["predictivity"]["planted"]
    assert set(layers) == {"layer1", "layer2", "layer4"}
    for s in layers.values():
        assert -1 <= s["raw"] <= 1 and len(s["split_scores"]) == 4 and s["raw_ci"][0] <= s["raw"] <= s["raw_ci"][1]
    assert 0.6 < record["ceiling"]["planted"]["median"] < 1.0  # planted reliability 0.8, 40 stimuli
    assert record["data"]["synthetic"] is True and "r_over_ceiling" in record["normalisation"]
    assert set(record["rsa"]["planted"]) == set(layers)
    for key in record["figures"]:
        image = Image.open(store.open_read(key))
        assert image.size[0] > 200 and np.asarray(image).std() > 0

    comparison = store.get_json(f"scores/{run_id}/planted-vs-{tiny_spec.run_id('run-b')}.json")
    sim = np.array(comparison["similarity"])
    assert sim.shape == (3, 3) and np.all(np.abs(sim) <= 1 + 1e-9)

    again = run_job(tiny_spec, store)
    assert again["computed"] == 0 and again["skipped"] == 3
    assert store.get_json(f"scores/{run_id}/planted.json")["created"] == record["created"]


def test_shards_split_the_tasks(finished_store, tiny_spec):
    first = run_job(tiny_spec, finished_store, index=0, count=2)
    second = run_job(tiny_spec, finished_store, index=1, count=2)
    assert first["tasks"] + second["tasks"] == 3
    assert not set(first["outputs"]) & set(second["outputs"])
    with pytest.raises(ValueError, match="shard index"):
        run_job(tiny_spec, finished_store, index=2, count=2)


def test_missing_run_is_named(tmp_path, tiny_spec):
    store = LocalStore(tmp_path / "s")
    finish_run(store, tiny_spec, "run-a", 0)
    with pytest.raises(ObjectNotFoundError, match=r"run 'run-b' \(run-b-[0-9a-f]+\) is not finished.*done.json"):
        run_job(tiny_spec, store)


def test_user_file_benchmark(tmp_path, finished_store, tiny_spec):
    from services.common.spec.experiment import parse_spec
    from services.neuro.dataformat import write_neural_data
    from services.neuro.planted import generate_planted
    from tests.neuro.conftest import TINY

    data = generate_planted(tiny_spec.neural_data[0])
    data.regions = np.array(["V4"] * 6 + ["IT"] * 6, dtype=object)
    data.synthetic = False
    write_neural_data(tmp_path / "rec.h5", data)
    spec = parse_spec({**TINY, "neural_data": [{"name": "rec", "kind": "file", "path": str(tmp_path / "rec.h5")}],
                       "scoring": [{**TINY["scoring"][0], "runs": ["run-a"], "benchmarks": ["rec"], "rsa_compare": "kendall_tau_a"}]})
    run_job(spec, finished_store)
    record = finished_store.get_json(f"scores/{spec.run_id('run-a')}/rec.json")
    assert set(record["predictivity"]) == {"V4", "IT"} and record["data"]["synthetic"] is False
    assert all(-1 <= v <= 1 for v in record["rsa"]["IT"].values())
    missing = parse_spec({**TINY, "neural_data": [{"name": "rec", "kind": "file", "path": "/nowhere/rec.h5"}],
                          "scoring": [{**TINY["scoring"][0], "runs": ["run-a"], "benchmarks": ["rec"]}]})
    with pytest.raises(ObjectNotFoundError, match="neural_data 'rec': no file '/nowhere/rec.h5'"):
        run_job(missing, finished_store)


def test_a_damaged_checkpoint_is_refused_naming_its_key(finished_store, tiny_spec):
    """A flipped byte in final.pt (listed in done.json) is never scored: IntegrityError naming the key."""
    key = checkpoint_key(tiny_spec.run_id("run-a"))
    data = bytearray(finished_store.get_bytes(key))
    data[len(data) // 2] ^= 0x01
    finished_store.put_bytes(key, bytes(data))
    scoring = tiny_spec.scoring[0]
    with pytest.raises(IntegrityError, match=re.escape(key) + ".*sha256.*done.json"):
        score_run(tiny_spec, finished_store, scoring, "run-a", "planted")
    with pytest.raises(IntegrityError, match=re.escape(key)):
        compare_models(tiny_spec, finished_store, scoring, "run-b", "run-a", "planted", layers_a=["layer1"],
                       layers_b=["layer1"])
    finished_store.put_bytes(key, bytes(data[:1000]))  # truncated
    with pytest.raises(IntegrityError, match=re.escape(key) + ": 1000 bytes"):
        score_run(tiny_spec, finished_store, scoring, "run-a", "planted")
    assert not finished_store.exists(f"scores/{tiny_spec.run_id('run-a')}/planted.json")
