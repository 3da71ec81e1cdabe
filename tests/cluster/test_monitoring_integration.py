"""A real Prometheus scraping a running stage server's metrics endpoint and a real Pushgateway
fed by JobMetrics.publish(); both queried back over their HTTP APIs, and every query of the
Grafana dashboard run against that Prometheus."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import pytest

from flatland.v1 import common_pb2, common_pb2_grpc
from services.common.jobmetrics import JobMetrics
from services.common.server import start_server
from services.common.store import LocalStore

from .k8s_checks import REPO

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PUSHGATEWAY = shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"
DASHBOARD = REPO / "k8s" / "base" / "monitoring" / "dashboards" / "flatland.json"
SPEC_TEXT = "name: itest\ndatasets:\n  - name: proc\n    family: {family: procsynth}\n    classes: 2\n"

pytestmark = [
    pytest.mark.skipif(not Path(PROMETHEUS).exists(), reason="the Debian prometheus package is not installed"),
    pytest.mark.skipif(not Path(PUSHGATEWAY).exists(), reason="the Debian prometheus-pushgateway package is not installed"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def wait_http(url: str, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}: {process.stderr.read().decode()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not come up in {timeout} s")


def query(prometheus: str, expr: str) -> dict:
    return get_json(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))


def poll(prometheus: str, expr: str, predicate, timeout: float = 30.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    result: list[dict] = []
    while time.monotonic() < deadline:
        result = query(prometheus, expr)["data"]["result"]
        if predicate(result):
            return result
        time.sleep(0.25)
    raise AssertionError(f"Prometheus never satisfied the check for {expr!r}; last result {result}")


@pytest.fixture
def processes():
    started: list[subprocess.Popen] = []
    yield started
    for process in started:  # only the processes this test started, by handle
        process.terminate()
    for process in started:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def test_prometheus_scrapes_server_and_pushgateway(tmp_path, processes):
    server = start_server(None, LocalStore(tmp_path / "store"), host="127.0.0.1", port=0, metrics_port=0)
    try:
        push_port, prom_port = free_port(), free_port()
        pushgateway = f"http://127.0.0.1:{push_port}"
        prometheus = f"http://127.0.0.1:{prom_port}"
        # Debian's build persists to /var/lib by default: keep each run's metrics to itself.
        processes.append(subprocess.Popen([PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{push_port}",
                                           f"--persistence.file={tmp_path / 'pushgateway.data'}"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        config = tmp_path / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": "flatland-services", "static_configs": [{"targets": [f"127.0.0.1:{server.metrics_port}"]}]},
                # As the ServiceMonitor does: keep the experiment/stage/index labels the jobs pushed.
                {"job_name": "pushgateway", "honor_labels": True, "static_configs": [{"targets": [f"127.0.0.1:{push_port}"]}]},
            ],
        }))
        processes.append(subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))

        # Traffic on the running server: two good calls, one bad (INVALID_ARGUMENT).
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = common_pb2_grpc.SpecStub(channel)
            assert stub.Validate(common_pb2.SpecText(text=SPEC_TEXT)).name == "itest"
            assert stub.Validate(common_pb2.SpecText(text=SPEC_TEXT)).name == "itest"
            with pytest.raises(grpc.RpcError) as bad:
                stub.Validate(common_pb2.SpecText(text="name: itest\nclasses: -1\n"))
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # Two render job pods (Indexed Job completions 0 and 1) push their progress.
        wait_http(f"{pushgateway}/-/ready", processes[0])
        pod0 = JobMetrics("render", "itest", 0, pushgateway=pushgateway)
        pod1 = JobMetrics("render", "itest", 1, pushgateway=pushgateway)
        for task, done in (("shards", 1), ("shards", 3)):
            pod0.progress(task, done, 5)
        pod1.progress("shards", 4, 4)
        trainer = JobMetrics("train", "itest", 0, pushgateway=pushgateway)
        trainer.set("loss", 1.25)
        trainer.set("top1", 0.375)
        assert pod0.publish() and pod1.publish() and trainer.publish()

        # The Pushgateway holds one group per (experiment, stage, index).
        groups = get_json(f"{pushgateway}/api/v1/metrics")["data"]
        by_key = {(g["labels"].get("experiment"), g["labels"].get("stage"), g["labels"].get("index")): g for g in groups}
        assert set(by_key) == {("itest", "render", "0"), ("itest", "render", "1"), ("itest", "train", "0")}
        done0 = by_key[("itest", "render", "0")]["flatland_job_items_done_total"]["metrics"][0]["value"]
        assert float(done0) == 3.0

        # Prometheus scraped both: the server's RPC counters and the pushed job metrics.
        wait_http(f"{prometheus}/-/ready", processes[1])
        ok = poll(prometheus, 'flatland_rpc_requests_total{service="flatland.v1.Spec",method="Validate",code="OK"}',
                  lambda r: r and float(r[0]["value"][1]) == 2.0)
        assert ok[0]["metric"]["job"] == "flatland-services"
        poll(prometheus, 'flatland_rpc_errors_total{code="INVALID_ARGUMENT"}', lambda r: r and float(r[0]["value"][1]) == 1.0)
        poll(prometheus, 'flatland_rpc_latency_seconds_count{method="Validate"}', lambda r: r and float(r[0]["value"][1]) == 3.0)
        loss = poll(prometheus, 'flatland_train_loss{experiment="itest"}', lambda r: len(r) == 1)
        assert float(loss[0]["value"][1]) == 1.25 and loss[0]["metric"]["index"] == "0"

        # Every dashboard query is valid PromQL; the queue panel shows 9 declared - 7 done = 2 left.
        dashboard = json.loads(DASHBOARD.read_text())
        exprs = {p["title"]: [t["expr"].replace("$experiment", "itest") for t in p["targets"]] for p in dashboard["panels"]}
        for title, panel_exprs in exprs.items():
            for expr in panel_exprs:
                answer = query(prometheus, expr)
                assert answer["status"] == "success", f"dashboard panel {title!r}: {expr} -> {answer}"
        (remaining_expr,) = exprs["Remaining work items (queue)"]
        remaining = poll(prometheus, remaining_expr, lambda r: any(s["metric"].get("stage") == "render" for s in r))
        assert {s["metric"]["stage"]: float(s["value"][1]) for s in remaining}["render"] == 2.0
        (top1_expr,) = exprs["Training top-1 accuracy"]
        assert float(poll(prometheus, top1_expr, lambda r: len(r) == 1)[0]["value"][1]) == 0.375
    finally:
        server.stop(grace=0.5)
