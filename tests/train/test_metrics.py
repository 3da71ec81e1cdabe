"""Epoch metrics reach a real Prometheus Pushgateway with the experiment/stage/index grouping key."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest

from services.train.metrics import PUSHGATEWAY_ENV, RunGauges

RECORD = {"epoch": 2, "train_loss": 0.7, "train_top1": 0.8, "train_top5": 0.95, "val_loss": 0.9, "val_top1": 0.625,
          "val_top5": 0.9, "lr": 0.01, "train_samples": 128, "corrupt_samples": 1, "images_per_s": 50.0}


@contextlib.contextmanager
def running_pushgateway(tmp_path):
    """A real Pushgateway on a free loopback port (its URL); None where the binary is not installed."""
    binary = shutil.which("prometheus-pushgateway")
    if binary is None:
        yield None
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Debian's build persists to /var/lib by default: keep each run's metrics to itself.
    process = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}", f"--persistence.file={tmp_path / 'pg.data'}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/-/ready", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def pushgateway(tmp_path):
    with running_pushgateway(tmp_path) as url:
        if url is None:
            pytest.skip("prometheus-pushgateway is not installed")
        yield url


def test_epoch_metrics_are_pushed_with_the_grouping_key(pushgateway, monkeypatch):
    monkeypatch.setenv(PUSHGATEWAY_ENV, pushgateway)
    gauges = RunGauges("exp-a", "run-1234", index=3)
    gauges.observe(RECORD)
    gauges.observe(RECORD | {"epoch": 3, "val_top1": 0.75, "train_samples": 100})
    text = urllib.request.urlopen(f"{pushgateway}/metrics", timeout=5).read().decode()
    lines = [line for line in text.splitlines() if line.startswith("flatland_train_") and 'run="run-1234"' in line]
    assert lines, text[:2000]
    for expected in ('experiment="exp-a"', 'stage="train"', 'index="3"', 'job="flatland-train"'):
        assert all(expected in line for line in lines)
    val_top1 = next(line for line in lines if line.startswith("flatland_train_top1{") and 'split="val"' in line)
    assert float(val_top1.rsplit(" ", 1)[1]) == 0.75
    samples = next(line for line in lines if line.startswith("flatland_train_samples_total{"))
    assert float(samples.rsplit(" ", 1)[1]) == 228
    epoch = next(line for line in lines if line.startswith("flatland_train_epoch{"))
    assert float(epoch.rsplit(" ", 1)[1]) == 4


def test_an_unreachable_pushgateway_does_not_fail_training(monkeypatch):
    monkeypatch.setenv(PUSHGATEWAY_ENV, "127.0.0.1:9")  # discard port: nothing listens
    RunGauges("exp-a", "run-5678").observe(RECORD)  # logs a warning, raises nothing
