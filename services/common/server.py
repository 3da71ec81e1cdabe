"""Start any stage's gRPC server: health, reflection, metrics, error mapping, graceful stop.

One function, :func:`start_server`, used by ``flatland serve`` and by tests. Per-RPC
request counts, error counts by status code and latency histograms come from an
interceptor, so no servicer method carries metrics code; the same interceptor turns
exceptions that escape a servicer into status codes (validation errors →
INVALID_ARGUMENT, missing objects → NOT_FOUND, caps → RESOURCE_EXHAUSTED, anything
else → INTERNAL) and the server stays up.

No call may starve another: calls are sorted into classes with their own concurrency
limits (long-running work, streams, spec validation), and a call beyond its class's limit
is refused at once with RESOURCE_EXHAUSTED instead of queueing. The thread pool is sized
so that every class can be full and threads remain for the control calls
(``Health/Check``, ``Train/GetRun``, ``Train/CancelRun``), which are never limited. Each
call runs in a :func:`~services.common.cancel.cancel_scope`: library loops stop at their
next :func:`~services.common.cancel.check_cancelled` once the client cancels, its deadline
passes or the server is stopping.
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
from services.common.cancel import cancel_scope
from services.common.status import message_for, status_for_exception
from services.common.stages import get_stage, list_stages
from services.common.store import Store

log = logging.getLogger("flatland.server")

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

#: Never limited, and always left threads: they must answer while everything else is busy.
CONTROL_METHODS = frozenset({
    "/grpc.health.v1.Health/Check", "/flatland.v1.Train/GetRun", "/flatland.v1.Train/CancelRun",
})
#: Threads kept for the control calls on top of every limited class's share.
CONTROL_THREADS = 4


@dataclass(frozen=True)
class CallLimits:
    """Most calls of each class in flight at once; one more is refused with RESOURCE_EXHAUSTED."""

    work: int = 8  # unary calls that compute: GenerateMesh, RenderImages, StartRun, CompareModels
    streams: int = 16  # server-streaming calls: WatchRun, GenerateDataset, RenderDataset, Score, Health/Watch
    spec: int = 4  # Spec/Validate and Spec/Schema

    @property
    def threads(self) -> int:
        return self.work + self.streams + self.spec + CONTROL_THREADS

    def call_class(self, method: str, streaming: bool) -> str | None:
        if method in CONTROL_METHODS:
            return None
        if streaming:
            return "streams"
        if method.startswith("/flatland.v1.Spec/"):
            return "spec"
        return "work"


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


def _gone_code(context) -> grpc.StatusCode:
    """CANCELLED, or DEADLINE_EXCEEDED when the client's deadline is what ended the call."""
    remaining = context.time_remaining()
    return grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0 else grpc.StatusCode.CANCELLED


class ServerInterceptor(grpc.ServerInterceptor):
    """Metrics, concurrency limits, cancellation scope and exception→status mapping around every handler."""

    def __init__(self, metrics: RpcMetrics, limits: CallLimits | None = None, stopping: threading.Event | None = None):
        self.metrics = metrics
        self.limits = limits or CallLimits()
        self.stopping = stopping or threading.Event()
        self._slots = {name: threading.BoundedSemaphore(getattr(self.limits, name)) for name in ("work", "streams", "spec")}

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        service, method = _split_method(handler_call_details.method)
        metrics = self.metrics
        stopping = self.stopping
        call_class = self.limits.call_class(handler_call_details.method, bool(handler.response_streaming))
        slots = self._slots.get(call_class) if call_class else None
        limit = getattr(self.limits, call_class) if call_class else 0

        def admit(context, started) -> None:
            if slots is not None and not slots.acquire(blocking=False):
                metrics.observe(service, method, grpc.StatusCode.RESOURCE_EXHAUSTED, time.perf_counter() - started)
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{method}: this server already runs {limit} {call_class} calls, its limit; retry later",
                )

        def release() -> None:
            if slots is not None:
                slots.release()

        def finish(context, started, exc):
            if not context.is_active():
                # The client went away (cancelled, or its deadline passed) while the handler
                # ran: whether the handler noticed and returned or raised, the call did not succeed.
                code = _gone_code(context)
                metrics.observe(service, method, code, time.perf_counter() - started)
                if exc is not None:
                    context.abort(code, message_for(exc))  # raises; nobody is listening
                return
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
                admit(context, started)
                gauge = metrics.in_flight.labels(service, method)
                gauge.inc()
                try:  # the call is counted before it leaves in_flight, so a reader never sees neither
                    try:
                        with cancel_scope(context.is_active, stopping):
                            response = behavior(request, context)
                    except Exception as exc:  # noqa: BLE001 - mapped to a status code
                        finish(context, started, exc)
                        raise
                    finish(context, started, None)
                    return response
                finally:
                    gauge.dec()
                    release()

            return wrapped

        def wrap_stream_response(behavior):
            def wrapped(request, context):
                started = time.perf_counter()
                admit(context, started)
                gauge = metrics.in_flight.labels(service, method)
                gauge.inc()
                try:  # counted before it leaves in_flight (as for unary calls)
                    try:
                        with cancel_scope(context.is_active, stopping):
                            yield from behavior(request, context)
                    except GeneratorExit:
                        # gRPC closes the response iterator when the client cancels mid-stream.
                        metrics.observe(service, method, _gone_code(context), time.perf_counter() - started)
                        raise
                    except Exception as exc:  # noqa: BLE001
                        finish(context, started, exc)
                        raise
                    finish(context, started, None)
                finally:
                    gauge.dec()
                    release()

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
    #: Set when in-flight work must stop: library loops then raise ``Cancelled`` at their next check.
    stopping: threading.Event = field(default_factory=threading.Event)
    _stop_lock: threading.Lock = field(default_factory=threading.Lock)

    def stop(self, grace: float = 5.0) -> None:
        """Stop within ``grace`` seconds: health NOT_SERVING, refuse new calls, let in-flight
        calls finish, and cancel what is still running a little before the grace ends."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            self.health.enter_graceful_shutdown()  # Watch streams see NOT_SERVING first
            done = self.server.stop(grace)  # new calls are refused from here on
            margin = min(2.0, grace / 2)
            if not done.wait(max(grace - margin, 0.0)):
                self.stopping.set()  # long handlers raise Cancelled at their next check
                done.wait(margin)
            self.stopping.set()  # background work (training threads) stops too
            self._finish()

    def _finish(self) -> None:
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
    max_streams: int = 16,
    max_spec_calls: int = 4,
    workers: int = 1,
    extra_registrars: Iterable[Callable[[grpc.Server, Store], list[str]]] = (),
) -> RunningServer:
    """Start the gRPC server of ``stage`` ("meshgen", "render", "train", "neuro", "all", or
    None for the common services only).

    ``port=0`` / ``metrics_port=0`` pick free ports (read them back from the result);
    ``metrics_port=None`` disables the metrics endpoint. Every server also carries the
    ``flatland.v1.Spec`` service; ``extra_registrars`` add more services (tests use it).
    ``max_workers``, ``max_streams`` and ``max_spec_calls`` cap the calls in flight per class
    (:class:`CallLimits`); the thread pool holds all of them plus threads for the control calls.
    ``workers``: processes a dataset call (``GenerateDataset``, ``RenderDataset``, ``Score``) splits its
    items over (:class:`services.common.workers.WorkerPool`, the Indexed-job split; same bytes for any
    count); 1 keeps the work in the server's process.
    """
    for name, value in (("max_workers", max_workers), ("max_streams", max_streams),
                        ("max_spec_calls", max_spec_calls), ("workers", workers)):
        if value < 1:
            raise ValueError(f"{name}: must be >= 1, got {value}")
    stage_names = resolve_stages(stage)
    registry = CollectorRegistry()
    metrics = RpcMetrics(registry)
    limits = CallLimits(work=max_workers, streams=max_streams, spec=max_spec_calls)
    stopping = threading.Event()
    options = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=limits.threads, thread_name_prefix=f"grpc-{stage or 'common'}"),
        interceptors=[ServerInterceptor(metrics, limits, stopping)],
        options=options,
    )
    services: list[str] = spec_servicer.register(server, store)
    for registrar in extra_registrars:
        services.extend(registrar(server, store))
    for name in stage_names:
        # The registry this server's metrics port exposes: a stage's own metrics (train: loss, top-1) go there too.
        services.extend(get_stage(name).servicer().register(server, store, registry=registry, workers=workers))

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
    return RunningServer(server, bound, actual_metrics_port, services, health_servicer, registry, metrics_http,
                         stopping=stopping)
