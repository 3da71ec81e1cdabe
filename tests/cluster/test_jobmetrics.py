"""JobMetrics: counters and gauges of a batch job, pushed or served (unit level; the real
Pushgateway and Prometheus are in test_monitoring_integration.py)."""

from __future__ import annotations

import socket
import threading
import urllib.request

import pytest

from services.common.jobmetrics import JobMetrics


def value(metrics: JobMetrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"stage": metrics.stage})


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_counts_and_gauges():
    m = JobMetrics("render", "exp", 3, pushgateway="")
    assert value(m, "flatland_job_items_done_total") == 0  # exists before the first item
    m.items_total(12)
    m.item_done()
    m.item_done(2)
    m.set("loss", 0.25)
    m.set("flatland_train_top1", 0.5)
    m.set("flatland_render_images_per_second", 41.5)
    assert value(m, "flatland_job_items_done_total") == 3 == m.items_done()
    assert value(m, "flatland_job_items_total") == 12
    assert value(m, "flatland_train_loss") == 0.25
    assert value(m, "flatland_train_top1") == 0.5
    assert value(m, "flatland_render_images_per_second") == 41.5
    assert m.grouping_key == {"experiment": "exp", "stage": "render", "index": "3"}


def test_progress_callback_adds_up_tasks():
    m = JobMetrics("meshgen", "exp", pushgateway="")
    m.progress("dataset a", 2, 5)
    m.progress("dataset b", 1, 3)
    m.progress("dataset a", 5, 5)
    m.progress("dataset a", 4, 5)  # a stale report never counts backwards
    assert m.items_done() == 6
    assert value(m, "flatland_job_items_total") == 8


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="stage"):
        JobMetrics("Render!", "exp")
    with pytest.raises(ValueError, match="index"):
        JobMetrics("render", "exp", -1)
    m = JobMetrics("train", "exp", pushgateway="")
    with pytest.raises(ValueError, match="not allowed"):
        m.set("accuracy", 1.0)
    with pytest.raises(ValueError, match="counter"):
        m.set("flatland_job_items_done_total", 1.0)
    with pytest.raises(ValueError, match="counts up"):
        m.item_done(-1)


def test_publish_without_gateway_is_a_no_op_and_unreachable_gateway_does_not_raise(monkeypatch):
    monkeypatch.delenv("FLATLAND_PUSHGATEWAY", raising=False)
    assert JobMetrics("render", "exp").publish() is False
    monkeypatch.setenv("FLATLAND_PUSHGATEWAY", f"http://127.0.0.1:{closed_port()}")
    m = JobMetrics("render", "exp")
    assert m.pushgateway.startswith("http://127.0.0.1:")
    assert m.publish() is False  # logged, not raised: monitoring must not fail the job


def test_thread_safe_counting():
    m = JobMetrics("render", "exp", pushgateway="")
    threads = [threading.Thread(target=lambda t=t: [m.progress(f"task{t}", i, 500) for i in range(1, 501)]) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.items_done() == 8 * 500
    assert value(m, "flatland_job_items_total") == 8 * 500


def test_serve_exposes_the_registry():
    m = JobMetrics("neuro", "exp", pushgateway="")
    m.items_total(4)
    m.item_done()
    port = m.serve(0, addr="127.0.0.1")
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        m.stop_serving()
    assert 'flatland_job_items_done_total{stage="neuro"} 1.0' in body
    assert 'flatland_job_items_total{stage="neuro"} 4.0' in body


def test_each_rank_pushes_its_own_group(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert "rank" not in JobMetrics("train", "exp", 0, pushgateway="").grouping_key
    monkeypatch.setenv("RANK", "5")  # set by torchrun in every process of a distributed job
    assert JobMetrics("train", "exp", 0, pushgateway="").grouping_key == {
        "experiment": "exp", "stage": "train", "index": "0", "rank": "5"}
    assert JobMetrics("train", "exp", 0, pushgateway="", rank=1).grouping_key["rank"] == "1"
    with pytest.raises(ValueError, match="rank"):
        JobMetrics("train", "exp", 0, pushgateway="", rank=-1)
    from services.train.metrics import RunGauges

    assert RunGauges("exp", "run-1", 0, rank=2).grouping_key == {"experiment": "exp", "stage": "train", "index": "0", "rank": "2"}
    assert "rank" not in RunGauges("exp", "run-1", 0).grouping_key


def test_finish_keeps_a_summary_and_deletes_the_groups(tmp_path, monkeypatch):
    import json

    from services.common.store import LocalStore
    from tests.train.test_metrics import running_pushgateway

    store = LocalStore(tmp_path / "store")
    assert JobMetrics("render", "exp", 0, pushgateway="").finish(store) is False  # no Pushgateway: nothing to do
    assert not store.exists("jobmetrics/render-0.json")
    monkeypatch.setenv("FLATLAND_METRICS_LINGER_SECONDS", "soon")
    with pytest.raises(ValueError, match="FLATLAND_METRICS_LINGER_SECONDS"):
        JobMetrics("render", "exp", 0, pushgateway="http://127.0.0.1:1").finish(store)
    monkeypatch.delenv("FLATLAND_METRICS_LINGER_SECONDS")
    with running_pushgateway(tmp_path) as gateway:
        if gateway is None:
            pytest.skip("prometheus-pushgateway is not installed")

        def groups():
            with urllib.request.urlopen(f"{gateway}/api/v1/metrics", timeout=5) as response:
                return {tuple(sorted(g["labels"].items())) for g in json.loads(response.read())["data"]}

        pods = [JobMetrics("train", "exp", 0, pushgateway=gateway, rank=r) for r in (0, 1)]
        for pod in pods:
            pod.progress("train:r", 2, 2)  # the last item pushes
        assert len(groups()) == 2
        slept = []
        assert pods[0].finish(store, linger=7, sleep=slept.append) is True
        assert slept == [7]  # waited for Prometheus to scrape the final values before deleting
        left = groups()
        assert len(left) == 1 and ("rank", "1") in next(iter(left))  # only the finished rank's group went
        summary = json.loads(store.get_bytes("jobmetrics/train-0-rank0.json"))
        assert summary["grouping_key"] == {"experiment": "exp", "stage": "train", "index": "0", "rank": "0"}
        assert summary["metrics"]["flatland_job_items_done_total{stage=train}"] == 2.0
        assert summary["metrics"]["flatland_job_items_total{stage=train}"] == 2.0
