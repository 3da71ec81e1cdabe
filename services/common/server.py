"""Start any stage's gRPC server: health, reflection, metrics, error mapping, graceful stop.

One function, :func:`start_server`, used by ``flatland serve`` and by tests. Per-RPC
request counts, error counts by status code and latency histograms come from an
interceptor, so no servicer method carries metrics code; the same interceptor turns
exceptions that escape a servicer into status codes (validation errors →
INVALID_ARGUMENT, missing objects → NOT_FOUND, caps → RESOURCE_EXHAUSTED, anything
else → INTERNAL) and the server stays up.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from services.common import spec_servicer
from services.common.status import message_for, status_for_exception
from services.common.stages import get_stage, list_stages
from services.common.store import Store

log = logging.getLogger("flatland.server")

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class RpcMetrics:
    """Prometheus metrics of one server, in its own registry."""

    def __init__(self, registry: CollectorRegistry):
        labels = ["service", "method"]
        self.requests = Counter("flatland_rpc_requests", "RPCs handled, by final status code.", labels + ["code"], registry=registry)
        self.errors = Counter("flatland_rpc_errors", "RPCs that ended with a non-OK status code.", labels + ["code"], registry=registry)
        self.latency = Histogram(
            "flatland_rpc_latency_seconds", "RPC wall time, including streaming.", labels, registry=registry,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 1800),
        )
        self.in_flight = Gauge("flatland_rpc_in_flight", "RPCs being handled now.", labels, registry=registry)

    def observe(self, service: str, method: str, code: grpc.StatusCode, seconds: float) -> None:
        self.requests.labels(service, method, code.name).inc()
        if code != grpc.StatusCode.OK:
            self.errors.labels(service, method, code.name).inc()
        self.latency.labels(service, method).observe(seconds)


def _split_method(full: str) -> tuple[str, str]:
    # "/flatland.v1.Meshgen/GenerateMesh" -> ("flatland.v1.Meshgen", "GenerateMesh")
    _, service, method = full.split("/", 2)
    return service, method


class ServerInterceptor(grpc.ServerInterceptor):
    """Metrics and exception→status mapping around every handler."""

    def __init__(self, metrics: RpcMetrics):
        self.metrics = metrics

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        service, method = _split_method(handler_call_details.method)
        metrics = self.metrics

        def finish(context, started, exc):
            if exc is not None:
                already = context.code()
                if already is None or already == grpc.StatusCode.OK:
                    code = status_for_exception(exc)
                    if code == grpc.StatusCode.INTERNAL:
                        log.exception("unexpected error in %s/%s", service, method, exc_info=exc)
                    metrics.observe(service, method, code, time.perf_counter() - started)
                    context.abort(code, message_for(exc))  # raises
                code = already
            else:
                code = context.code() or grpc.StatusCode.OK
            metrics.observe(service, method, code, time.perf_counter() - started)

        def wrap_unary_response(behavior):
            def wrapped(request, context):
                started = time.perf_counter()
                gauge = metrics.in_flight.labels(service, method)
                gauge.inc()
                try:
                    response = behavior(request, context)
                except Exception as exc:  # noqa: BLE001 - mapped to a status code
                    finish(context, started, exc)
                    raise
                finally:
                    gauge.dec()
                finish(context, started, None)
                return response

            return wrapped

        def wrap_stream_response(behavior):
            def wrapped(request, context):
                started = time.perf_counter()
                gauge = metrics.in_flight.labels(service, method)
                gauge.inc()
                try:
                    yield from behavior(request, context)
                except Exception as exc:  # noqa: BLE001
                    finish(context, started, exc)
                    raise
                finally:
                    gauge.dec()
                finish(context, started, None)

            return wrapped

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                wrap_unary_response(handler.unary_unary), handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                wrap_stream_response(handler.unary_stream), handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                wrap_unary_response(handler.stream_unary), handler.request_deserializer, handler.response_serializer
            )
        return grpc.stream_stream_rpc_method_handler(
            wrap_stream_response(handler.stream_stream), handler.request_deserializer, handler.response_serializer
        )


@dataclass
class RunningServer:
    """A started server; ``stop()`` is graceful (health NOT_SERVING, then drain)."""

    server: grpc.Server
    port: int
    metrics_port: int
    services: list[str]
    health: health.HealthServicer
    registry: CollectorRegistry
    _metrics_http: object = None
    _stopped: threading.Event = field(default_factory=threading.Event)

    def stop(self, grace: float = 5.0) -> None:
        """Refuse new calls, let in-flight calls finish within ``grace`` seconds, stop."""
        if self._stopped.is_set():
            return
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        self._stopped.set()

    def wait(self) -> None:
        self._stopped.wait()

    def stop_on_signals(self, grace: float = 5.0, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)) -> None:
        """Install handlers so SIGTERM/SIGINT stop the server gracefully (main thread only)."""

        def handler(signum, _frame):
            log.info("received %s: draining for up to %.1f s", signal.Signals(signum).name, grace)
            threading.Thread(target=self.stop, args=(grace,), daemon=True).start()

        for sig in signals:
            signal.signal(sig, handler)


def resolve_stages(stage: str | None) -> list[str]:
    if stage is None:
        return []
    return list_stages() if stage == "all" else [get_stage(stage).name]


def start_server(
    stage: str | None,
    store: Store,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    metrics_port: int | None = 0,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_workers: int = 8,
    extra_registrars: Iterable[Callable[[grpc.Server, Store], list[str]]] = (),
) -> RunningServer:
    """Start the gRPC server of ``stage`` ("meshgen", "render", "train", "neuro", "all", or
    None for the common services only).

    ``port=0`` / ``metrics_port=0`` pick free ports (read them back from the result);
    ``metrics_port=None`` disables the metrics endpoint. Every server also carries the
    ``flatland.v1.Spec`` service; ``extra_registrars`` add more services (tests use it).
    """
    stage_names = resolve_stages(stage)
    registry = CollectorRegistry()
    metrics = RpcMetrics(registry)
    options = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=f"grpc-{stage or 'common'}"),
        interceptors=[ServerInterceptor(metrics)],
        options=options,
    )
    services: list[str] = spec_servicer.register(server, store)
    for registrar in extra_registrars:
        services.extend(registrar(server, store))
    for name in stage_names:
        services.extend(get_stage(name).servicer().register(server, store))

    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ["", *services]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        [*services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
    )

    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind the gRPC server to {host}:{port} (in use?)")
    metrics_http = None
    actual_metrics_port = 0
    if metrics_port is not None:
        metrics_http, _thread = start_http_server(metrics_port, addr=host, registry=registry)
        actual_metrics_port = metrics_http.server_port
    server.start()
    log.info("serving %s on %s:%d (metrics on %d)", ", ".join(services), host, bound, actual_metrics_port)
    return RunningServer(server, bound, actual_metrics_port, services, health_servicer, registry, metrics_http)
