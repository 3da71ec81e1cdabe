"""End to end: the neuro job scores two finished runs against a planted benchmark, resumes, and names missing runs."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image
from scipy.stats import kendalltau, spearmanr

from services.common.errors import IntegrityError, ObjectNotFoundError
from services.common.store import LocalStore
from services.neuro.dataformat import read_neural_data
from services.neuro.job import run_job
from services.neuro.planted import planted_key
from services.neuro.predictivity import brainscore_internal_consistency, reduce_pca, reference_split_r, reliability_ceiling
from services.neuro.rsa import rdm
from services.neuro.scoring import checkpoint_key, compare_models, score_run
from tests.neuro.conftest import cached_layer_features, finish_run


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
    data = read_neural_data(store.get_bytes(planted_key(tiny_spec.neural_data[0])))
    presentations = data.presentations()
    mean = presentations.mean(axis=1)
    # The ceiling is the planted reliability's estimate: recomputed exactly, and near the planted 0.8.
    ceiling = reliability_ceiling(presentations)
    assert record["ceiling"]["planted"]["median"] == pytest.approx(np.median(ceiling), abs=1e-12)
    assert abs(record["ceiling"]["planted"]["median"] - 0.8) < 0.1
    bs_ceiling = brainscore_internal_consistency(presentations)["ceiling"]
    assert record["ceiling"]["planted"]["brainscore"]["ceiling"] == pytest.approx(bs_ceiling, abs=1e-12)
    # Every layer's score against a reference: converged scikit-learn PLS on the cached features, same PCA,
    # the splits the record lists; RSA against scipy's Spearman on pdist-style RDMs.
    tests = [np.asarray(t) for t in record["splits"]["test"]]
    assert sorted(np.concatenate(tests).tolist()) == list(range(40))  # 4 stratified folds: each stimulus once
    splits = [(np.setdiff1d(np.arange(40), t), t) for t in tests]
    for layer, s in layers.items():
        features = cached_layer_features(store, record, data, layer)
        x = reduce_pca(features, 50, seed=0)
        reference = reference_split_r(x, mean, splits, 25, max_iter=100_000, tol=1e-14)
        assert s["raw"] == pytest.approx(np.median(reference.mean(axis=0)), abs=1e-4), layer
        np.testing.assert_allclose(s["split_scores"], np.median(reference, axis=1), atol=1e-4)
        assert s["raw_ci"][0] <= s["raw"] <= s["raw_ci"][1]
        assert s["brainscore"]["raw"] == pytest.approx(np.mean(np.median(reference, axis=1)), abs=1e-4)
        assert s["brainscore"]["score"] == pytest.approx(s["brainscore"]["raw"] ** 2 / bs_ceiling, rel=1e-12)
        assert record["rsa"]["planted"][layer] == pytest.approx(spearmanr(rdm(features), rdm(mean)).statistic, abs=1e-10)
    assert record["data"]["synthetic"] is True and "r_over_ceiling" in record["normalisation"]
    for key in record["figures"]:
        image = Image.open(store.open_read(key))
        assert image.size[0] > 200 and np.asarray(image).std() > 0

    comparison = store.get_json(f"scores/{run_id}/planted-vs-{tiny_spec.run_id('run-b')}.json")
    sim = np.array(comparison["similarity"])
    record_b = store.get_json(f"scores/{tiny_spec.run_id('run-b')}/planted.json")
    expected = [[spearmanr(rdm(cached_layer_features(store, record, data, a)),
                           rdm(cached_layer_features(store, record_b, data, b))).statistic
                 for b in comparison["layers_b"]] for a in comparison["layers_a"]]
    assert sim.shape == (3, 3)
    np.testing.assert_allclose(sim, expected, atol=1e-10)

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
    it = data.presentations()[:, :, 6:].mean(axis=1)
    for layer, value in record["rsa"]["IT"].items():  # Kendall tau-a; RDMs of continuous data have no ties, so tau-b
        features = cached_layer_features(finished_store, record, data, layer)
        assert value == pytest.approx(kendalltau(rdm(features), rdm(it)).statistic, abs=1e-10)
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


def test_time_window_and_split_file_end_to_end(tmp_path, finished_store, tiny_spec):
    """A time-binned recording scored in a window, on explicit splits given by stimulus id; an edited split file rescores."""
    from services.common.spec.experiment import parse_spec
    from services.neuro.dataformat import write_neural_data
    from services.neuro.planted import generate_planted
    from tests.neuro.conftest import TINY

    data = generate_planted(tiny_spec.neural_data[0])
    rng = np.random.default_rng(0)
    # Bins [0,70) and [170,250) are pure noise; the window [70, 170] keeps the two signal bins.
    signal = data.responses.astype(np.float64)
    data.responses = np.stack([rng.normal(size=signal.shape) * 5, signal, signal, rng.normal(size=signal.shape) * 5],
                              axis=3).astype(np.float32)
    data.time_bins = np.array([[0, 70], [70, 120], [120, 170], [170, 250]], dtype=np.float64)
    data.synthetic = False
    write_neural_data(tmp_path / "binned.h5", data)
    ids = data.stimulus_ids.tolist()
    splits = [{"train": ids[:30], "test": ids[30:]}, {"train": ids[10:], "test": ids[:10]}]
    (tmp_path / "splits.json").write_text(json.dumps({"format": "flatland-splits", "splits": splits}))
    spec = parse_spec({**TINY, "neural_data": [{"name": "binned", "kind": "file", "path": str(tmp_path / "binned.h5"),
                                                "time_window_ms": [70, 170]}],
                       "scoring": [{**TINY["scoring"][0], "runs": ["run-a"], "benchmarks": ["binned"], "splits": "file",
                                    "split_file": str(tmp_path / "splits.json")}]})
    run_job(spec, finished_store)
    record = finished_store.get_json(f"scores/{spec.run_id('run-a')}/binned.json")
    assert record["time_window_ms"] == [70.0, 170.0] and record["splits"]["scheme"] == "file"
    assert record["splits"]["test"] == [list(range(30, 40)), list(range(10))]
    # The window's responses are the planted ones: the ceiling is the planted data's, not the noise bins'.
    assert record["ceiling"]["planted"]["median"] == pytest.approx(np.median(reliability_ceiling(signal)), abs=1e-6)
    assert len(record["predictivity"]["planted"]["layer1"]["split_scores"]) == 2
    (tmp_path / "splits.json").write_text(json.dumps({"format": "flatland-splits", "splits": splits[:1]}))
    assert run_job(spec, finished_store)["computed"] == 1  # edited split file: not skipped
    assert len(finished_store.get_json(f"scores/{spec.run_id('run-a')}/binned.json")["splits"]["test"]) == 1
    (tmp_path / "splits.json").write_text(json.dumps({"format": "flatland-splits", "splits": [{"train": ["x1", "x2"], "test": ids[:5]}]}))
    with pytest.raises(ValueError, match=r"split_file .*splits.json: split 0 train names 2 stimulus id\(s\) not in the data set"):
        run_job(spec, finished_store)
