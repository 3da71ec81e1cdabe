"""The service bootstrap, against a real gRPC server on a loopback port."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from flatland.v1 import common_pb2, common_pb2_grpc
from services.common.server import start_server
from services.common.store import LocalStore

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = (REPO / "experiments" / "quickstart.yaml").read_text()


# A deliberately faulty service, to see how the bootstrap handles a servicer that raises.
def _faulty_registrar(server, store):
    def boom(request, context):
        raise RuntimeError("kaboom")

    def slow(request, context):
        time.sleep(float(request.text or "1"))
        return common_pb2.SpecText(text="finished")

    handler = grpc.method_handlers_generic_handler(
        "test.Faulty",
        {
            "Boom": grpc.unary_unary_rpc_method_handler(
                boom, common_pb2.SpecText.FromString, common_pb2.SpecText.SerializeToString
            ),
            "Slow": grpc.unary_unary_rpc_method_handler(
                slow, common_pb2.SpecText.FromString, common_pb2.SpecText.SerializeToString
            ),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    return []


@pytest.fixture()
def server(tmp_path):
    running = start_server(None, LocalStore(tmp_path), extra_registrars=[_faulty_registrar])
    yield running
    running.stop(grace=0.5)


def _channel(port):
    return grpc.insecure_channel(f"127.0.0.1:{port}")


def _metrics(port) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def test_health_and_reflection(server):
    with _channel(server.port) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        assert health.Check(health_pb2.HealthCheckRequest(service="")).status == health_pb2.HealthCheckResponse.SERVING
        assert (
            health.Check(health_pb2.HealthCheckRequest(service="flatland.v1.Spec")).status
            == health_pb2.HealthCheckResponse.SERVING
        )
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        responses = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in responses[0].list_services_response.service}
        assert {"flatland.v1.Spec", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


def test_validate_and_metrics(server):
    with _channel(server.port) as ch:
        stub = common_pb2_grpc.SpecStub(ch)
        summary = stub.Validate(common_pb2.SpecText(text=QUICKSTART))
        assert summary.name == "quickstart"
        assert summary.dataset_ids["procsynth"].startswith("procsynth-")
        schema = json.loads(stub.Schema(common_pb2.SchemaRequest()).json_schema)
        assert schema["title"] == "Beyond Flatland experiment spec"
        bad = QUICKSTART.replace("classes: 8", "classes: -1", 1)
        with pytest.raises(grpc.RpcError) as info:
            stub.Validate(common_pb2.SpecText(text=bad))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "datasets[0].classes" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            stub.Validate(common_pb2.SpecText(text="{", format="json"))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    text = _metrics(server.metrics_port)
    assert 'flatland_rpc_requests_total{code="OK",method="Validate",service="flatland.v1.Spec"} 1.0' in text
    assert 'flatland_rpc_requests_total{code="INVALID_ARGUMENT",method="Validate",service="flatland.v1.Spec"} 2.0' in text
    assert 'flatland_rpc_errors_total{code="INVALID_ARGUMENT",method="Validate",service="flatland.v1.Spec"} 2.0' in text
    assert 'flatland_rpc_latency_seconds_count{method="Validate",service="flatland.v1.Spec"} 3.0' in text


def test_unexpected_exception_is_internal_and_server_survives(server):
    with _channel(server.port) as ch:
        boom = ch.unary_unary(
            "/test.Faulty/Boom",
            request_serializer=common_pb2.SpecText.SerializeToString,
            response_deserializer=common_pb2.SpecText.FromString,
        )
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as info:
                boom(common_pb2.SpecText())
            assert info.value.code() == grpc.StatusCode.INTERNAL
            assert "kaboom" in info.value.details()
        stub = common_pb2_grpc.SpecStub(ch)
        assert stub.Validate(common_pb2.SpecText(text=QUICKSTART)).name == "quickstart"
    assert 'flatland_rpc_errors_total{code="INTERNAL",method="Boom",service="test.Faulty"} 3.0' in _metrics(server.metrics_port)


def test_max_message_size(tmp_path):
    running = start_server(None, LocalStore(tmp_path), max_message_bytes=1024)
    try:
        with _channel(running.port) as ch:
            with pytest.raises(grpc.RpcError) as info:
                common_pb2_grpc.SpecStub(ch).Validate(common_pb2.SpecText(text="#" * 4096))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        running.stop(grace=0.1)


def test_graceful_stop_lets_inflight_call_finish(server):
    with _channel(server.port) as ch:
        slow = ch.unary_unary(
            "/test.Faulty/Slow",
            request_serializer=common_pb2.SpecText.SerializeToString,
            response_deserializer=common_pb2.SpecText.FromString,
        )
        future = slow.future(common_pb2.SpecText(text="1.0"))
        time.sleep(0.3)  # the call is in flight
        stopper = threading.Thread(target=server.stop, kwargs={"grace": 5.0})
        stopper.start()
        assert future.result(timeout=10).text == "finished"
        stopper.join(10)
        # Health reported NOT_SERVING before the drain; the port is now closed.
        with pytest.raises(grpc.RpcError):
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=1)


def test_flatland_serve_sigterm(tmp_path):
    """`flatland serve` as a subprocess: answers health, exits cleanly on SIGTERM."""
    env = {**os.environ, "FLATLAND_STORE": str(tmp_path / "store")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "serve", "meshgen", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0", "--grace", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"server did not start: {proc.stderr.read()}")
        ports = json.loads(line)
        with _channel(ports["port"]) as ch:
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="flatland.v1.Meshgen"), timeout=5)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
        assert "flatland_rpc_requests_total" in _metrics(ports["metrics_port"])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
