"""Prometheus metrics and the per-request middleware both services use (one registry per app).

A process started with ``PROMETHEUS_MULTIPROC_DIR`` (each worker of ``splitinfer cloud --workers N``) keeps
its values in that directory, and its ``/metrics`` adds up every process's there
(:mod:`service_core.multiprocess_metrics`).
"""

from __future__ import annotations

import itertools
import logging
import re
import time
import uuid
from typing import Any

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service_core.connections import connections_refused_counter
from service_core.multiprocess_metrics import collect, multiprocess_dir, retire_dead_processes
from service_core.raw_headers import header_value

__all__ = [
    "REQUEST_ID_HEADER",
    "ServiceMetrics",
    "install_request_middleware",
    "metrics_response",
    "route_label",
]

logger = logging.getLogger("splitinfer.access")
_ACCESS_LOG = "request_id=%s method=%s route=%s status=%d ms=%.1f %s"
_LOG_LINE = 0  # NOTE: the records name this module; their line is not looked up

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_KEY = REQUEST_ID_HEADER.lower().encode()
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_BYTES_BUCKETS = tuple(float(2**k) for k in range(8, 28, 2))


class ServiceMetrics:
    """The metrics of one service instance, in their own registry (no global state)."""

    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess_dir = multiprocess_dir()
        """Where several processes keep their values (scrapes add them up), or None: this process's own."""
        if self.multiprocess_dir is not None:
            retire_dead_processes(self.multiprocess_dir)
        labels = {"service": service}
        self.requests = Counter(
            "splitinfer_requests",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "splitinfer_request_duration_seconds",
            "HTTP request latency by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.payload_bytes = Histogram(
            "splitinfer_payload_bytes",
            "Wire payload sizes: 'sent' to or 'received' from the peer.",
            ["direction"],
            buckets=_BYTES_BUCKETS,
            registry=self.registry,
        )
        self.compute = Histogram(
            "splitinfer_compute_seconds",
            "Model compute time by stage (head, tail, full).",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "splitinfer_batch_size",
            "Images per model execution.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.connections_refused = connections_refused_counter(self.registry)
        self.info = Gauge(
            "splitinfer_info",
            "Constant 1, labelled with what this instance serves.",
            ["service", "model", "weights", "cut", "codec"],
            registry=self.registry,
            multiprocess_mode="max",
        )
        self._info_labels: tuple[str, ...] | None = None
        self._service = labels["service"]
        # NOTE: the children the cloud's hot path observes, looked up once
        self.received_bytes = self.payload_bytes.labels("received")
        self.tail_seconds = self.compute.labels("tail")

    def set_info(self, model: str, weights: str, cut: str = "", codec: str | None = "") -> None:
        if self.multiprocess_dir is None:
            self.info.clear()
        elif self._info_labels is not None:
            # NOTE: values kept in files cannot be cleared: the old labels' series goes to 0 instead
            self.info.labels(*self._info_labels).set(0)
        self._info_labels = (self._service, model, weights, cut, codec or "")
        self.info.labels(*self._info_labels).set(1)


def metrics_response(metrics: ServiceMetrics) -> Response:
    """This process's metrics, or every process's added up when they share a directory."""
    if metrics.multiprocess_dir is not None:
        return Response(collect(metrics.multiprocess_dir), media_type=CONTENT_TYPE_LATEST)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def method_label(method: str) -> str:
    """The request's method as a label: one of the standard methods, or ``other`` (a client can send any
    token as a method; unbounded label values would grow the registry and every scrape without end)."""
    return method if method in _METHODS else "other"


def status_label(status: int) -> str:
    return str(status) if 100 <= status <= 599 else "other"


def route_label(scope: Scope) -> str:
    """The matched route's template: FastAPI's routes (and the direct ones) leave themselves in
    ``scope["route"]``; a plain Starlette route (FastAPI's own ``/openapi.json``) or a mount (the Swagger UI
    files) leaves only its ``endpoint``, found here among the app's routes: a mount is one label, never the
    path of a file under it. Anything else is ``unmatched`` (labels stay bounded by the routes)."""
    matched = scope.get("route")
    if matched is not None:
        return str(getattr(matched, "path", "unmatched"))
    endpoint = scope.get("endpoint")
    app = scope.get("app")
    if endpoint is None or app is None:
        return "unmatched"
    for candidate in getattr(app, "routes", ()):
        if (isinstance(candidate, Route) and candidate.endpoint is endpoint) or (
            isinstance(candidate, Mount) and candidate.app is endpoint
        ):
            return candidate.path
    return "unmatched"


class _RequestIds:
    """The client's ``X-Request-ID`` when it is well-formed, else a new one: a random per-process prefix and
    a counter (unique without a ``uuid4`` per request, which costs a system call for its random bytes)."""

    def __init__(self) -> None:
        self._prefix = uuid.uuid4().hex[:16]
        self._count = itertools.count()

    def __call__(self, scope: Scope) -> str:
        incoming = header_value(scope, _REQUEST_ID_KEY)
        if incoming is not None and _REQUEST_ID.match(incoming):
            return incoming
        return f"{self._prefix}{next(self._count):016x}"


class _ObserveRequests:
    """Pure ASGI middleware (cheaper than ``@app.middleware``): request ids, metrics, one access-log line."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._request_id = _RequestIds()
        # NOTE: the labelled children, looked up once per label set (bounded: routes, methods, statuses).
        self._counted: dict[tuple[str, str, str], Any] = {}
        self._timed: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = self._request_id(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (_REQUEST_ID_KEY, request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            route = route_label(scope)
            method = method_label(scope["method"])
            key = (route, method, status_label(status))
            counted = self._counted.get(key) or self._counted.setdefault(key, self.metrics.requests.labels(*key))
            counted.inc()
            timed = self._timed.get(route) or self._timed.setdefault(route, self.metrics.latency.labels(route))
            timed.observe(elapsed)
            if logger.isEnabledFor(logging.INFO):
                fields = state.get("log_fields", {})
                extra = " ".join(f"{k}={v}" for k, v in fields.items())
                args = (request_id, method, route, status, elapsed * 1000, extra)
                # NOTE: logger.info would also walk the stack for the caller's file and line (a tenth of
                # the cloud's time per request went to the access log); the line is always this one.
                record = logger.makeRecord(logger.name, logging.INFO, __file__, _LOG_LINE, _ACCESS_LOG, args, None)
                logger.handle(record)


def install_request_middleware(app: FastAPI, metrics: ServiceMetrics) -> None:
    """Request ids (``X-Request-ID``), per-route metrics and one structured access-log line per request."""
    app.add_middleware(_ObserveRequests, metrics=metrics)
