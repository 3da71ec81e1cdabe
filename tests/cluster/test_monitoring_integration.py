"""A real Prometheus scraping a running stage server's metrics endpoint and a real Pushgateway
fed by JobMetrics.publish(), both queried back over their HTTP APIs; and the Grafana dashboard
checked against a real Prometheus fed by a real training run (a train server's run and a train
job pushing to the Pushgateway), every panel's query returning data."""

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

        # The queue arithmetic the dashboard uses: 9 declared - 7 done = 2 left.
        remaining = poll(prometheus, 'sum by (stage) (flatland_job_items_total{experiment="itest"}) - '
                         'sum by (stage) (flatland_job_items_done_total{experiment="itest"})',
                         lambda r: any(s["metric"].get("stage") == "render" for s in r))
        assert {s["metric"]["stage"]: float(s["value"][1]) for s in remaining}["render"] == 2.0
    finally:
        server.stop(grace=0.5)


def start_monitoring(tmp_path, processes, server_metrics_port: int) -> tuple[str, str]:
    """A real Pushgateway and a real Prometheus (1 s scrapes of it, with honor_labels, and of the server)."""
    push_port, prom_port = free_port(), free_port()
    processes.append(subprocess.Popen([PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{push_port}",
                                       f"--persistence.file={tmp_path / 'pushgateway.data'}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "flatland-services", "static_configs": [{"targets": [f"127.0.0.1:{server_metrics_port}"]}]},
            {"job_name": "pushgateway", "honor_labels": True, "static_configs": [{"targets": [f"127.0.0.1:{push_port}"]}]},
        ],
    }))
    processes.append(subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    pushgateway, prometheus = f"http://127.0.0.1:{push_port}", f"http://127.0.0.1:{prom_port}"
    wait_http(f"{pushgateway}/-/ready", processes[-2])
    wait_http(f"{prometheus}/-/ready", processes[-1])
    # Ready is not scraping yet: wait until both targets have been scraped, so nothing the runs do is missed.
    poll(prometheus, "up", lambda r: {s["metric"]["job"] for s in r if s["value"][1] == "1"} == {"flatland-services", "pushgateway"})
    return pushgateway, prometheus


def query_range(prometheus: str, expr: str, start: float, end: float) -> list[dict]:
    answer = get_json(f"{prometheus}/api/v1/query_range?" + urllib.parse.urlencode(
        {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": "1"}))
    assert answer["status"] == "success", f"{expr} -> {answer}"
    return answer["data"]["result"]


def finite_values(series: list[dict]) -> list[float]:
    return [float(v) for s in series for _, v in s["values"] if v not in ("NaN", "+Inf", "-Inf")]


@pytest.mark.slow  # ~15 s of real work (two tiny training runs, scrapes, the linger), plus importing torch
@pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning")
def test_dashboard_against_a_real_training_run(tmp_path, processes, monkeypatch):
    """Every panel of the Grafana dashboard returns data from a real Prometheus fed by real runs:
    a train server's run (scraped: RPCs, loss, top-1) and a train job (pushed: items, loss, top-1)."""
    from rich.console import Console

    from services.experiment.runner import run_stage_with_progress
    from tests.train.synthetic_shards import write_dataset
    from tests.train.test_pretrain import make_spec

    spec = make_spec(epochs=1, batch_size=8, input_size=16, model="mobilenet_v3_small")
    server_store, job_store = LocalStore(tmp_path / "server-store"), LocalStore(tmp_path / "job-store")
    for store in (server_store, job_store):
        write_dataset(store, spec.dataset_id("shapes"), classes=6, views={"train": 4, "val": 1}, size=16)
    server = start_server("train", server_store, host="127.0.0.1", port=0, metrics_port=0)
    try:
        pushgateway, prometheus = start_monitoring(tmp_path, processes, server.metrics_port)
        started = time.time()
        # 1. The service path: a run on the train server, watched to the end, and one bad request.
        from flatland.v1 import train_pb2, train_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = train_pb2_grpc.TrainStub(channel)
            item = common_pb2.ExperimentItem(spec=common_pb2.SpecText(text=spec.model_dump_json(), format="json"), name="r")
            ref = stub.StartRun(item, timeout=30)
            assert list(stub.WatchRun(ref, timeout=120))[-1].state == train_pb2.RUN_STATE_SUCCEEDED
            with pytest.raises(grpc.RpcError) as bad:
                stub.StartRun(common_pb2.ExperimentItem(spec=item.spec, name="no-such-run"), timeout=30)
            assert bad.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
            for _ in range(6):  # a client polling the run: calls spread over several scrapes
                stub.GetRun(ref, timeout=10)
                time.sleep(0.5)
        # 2. The job path, as a Kubernetes Job pod runs it: pushes while training, then finishes.
        monkeypatch.setenv("FLATLAND_PUSHGATEWAY", pushgateway)
        monkeypatch.setenv("FLATLAND_METRICS_LINGER_SECONDS", "3")  # > 2 scrapes of the final values
        monkeypatch.delenv("RANK", raising=False)
        run_stage_with_progress("train", spec, job_store, index=0, count=1, console=Console(quiet=True), part="pretrain")
        # Finished: its Pushgateway groups are gone, a summary of its final values is in the store.
        groups = get_json(f"{pushgateway}/api/v1/metrics")["data"]
        assert not [g for g in groups if g["labels"].get("experiment") == spec.name], groups
        summary = json.loads(job_store.get_bytes("jobmetrics/train-0.json"))
        assert summary["metrics"]["flatland_job_items_done_total{stage=train}"] == 1.0  # the one epoch of run r
        records = {}
        for name, store in (("server", server_store), ("job", job_store)):
            lines = store.get_bytes(f"runs/{spec.run_id('r')}/metrics.jsonl").decode().splitlines()
            records[name] = [json.loads(line) for line in lines]
        time.sleep(1.5)  # the last scrapes of the server
        end = time.time()

        dashboard = json.loads(DASHBOARD.read_text())
        values = {}
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = target["expr"].replace("$experiment", ".*")  # Grafana's "All"
                series = query_range(prometheus, expr, started, end)
                assert finite_values(series), f"dashboard panel {panel['title']!r}: no data for {expr}"
                values[panel["title"], target["expr"]] = series
        # What the panels show is what the runs measured.
        loss = next(s for (title, _), s in values.items() if title == "Training loss")
        shown = {(s["metric"].get("job"), s["metric"].get("split")): {float(v) for _, v in s["values"]} for s in loss}
        assert records["job"][-1]["train_loss"] in shown["flatland-train", "train"]  # pushed by the job
        assert records["server"][-1]["train_loss"] in shown["flatland-services", "train"]  # scraped from the server
        top1 = next(s for (title, _), s in values.items() if title == "Training top-1 accuracy")
        assert any(records["job"][-1]["val_top1"] in {float(v) for _, v in s["values"]} for s in top1
                   if s["metric"].get("split") == "val")
        errors = next(s for (title, _), s in values.items() if title.startswith("RPC errors"))
        assert {s["metric"]["code"] for s in errors} == {bad.value.code().name}
        remaining = next(s for (title, _), s in values.items() if title.startswith("Remaining"))
        train_left = [float(v) for s in remaining if s["metric"].get("stage") == "train" for _, v in s["values"]]
        assert train_left[-1] == 0.0  # its epoch done by the time the group was deleted
    finally:
        server.stop(grace=0.5)
