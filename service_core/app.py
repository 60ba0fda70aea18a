"""The skeleton both services are built on: one app factory and one operations router.

A service gives its title, its lifespan (which yields the service's state: model, clients, executors),
its routers, a readiness check and its body limits; everything else is the same for both:

- ``app.state.service`` holds what the lifespan yielded; :func:`service_state` hands it to handlers and
  answers 503 while the model is still loading;
- ``app.state.draining`` turns ``/readyz`` to 503 (set on SIGTERM by ``splitinfer.serve`` and when the
  lifespan ends);
- domain errors render as problem+json (:mod:`service_core.problems`);
- ``HEAD`` is answered wherever ``GET`` is (:mod:`service_core.head_requests`);
- every request gets an id, metrics and one access-log line (:mod:`service_core.metrics`), and its body
  is bounded in size and time where it enters (:mod:`service_core.body_limit`), after admission
  (:mod:`service_core.admission`: requests and body bytes in flight) and before any byte is read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from service_core.admission import Admission, AdmissionMiddleware
from service_core.body_limit import BodyLimitMiddleware, LimitFor
from service_core.direct_routes import DirectRoute, DirectRoutesMiddleware
from service_core.head_requests import HeadAsGetMiddleware
from service_core.http import package_version
from service_core.metrics import ServiceMetrics, install_request_middleware, metrics_response
from service_core.openapi import ReadinessReport, install_openapi, problem_responses
from service_core.problems import install_problem_handlers
from shared.errors import ServiceUnavailable

__all__ = ["Readiness", "ServiceLifespan", "ServiceRoutes", "create_service_app", "operations_router", "service_state"]

ServiceLifespan = Callable[[FastAPI], AbstractAsyncContextManager[Any]]
"""Loads what the service needs, yields it as the service's state, and releases it afterwards."""
Readiness = Callable[[Request, Any], Awaitable[dict[str, Any]]]
"""Given the request and the service's state: the readiness report, or a raised ServiceUnavailable."""


@dataclass(frozen=True)
class ServiceRoutes:
    """What a service serves: its name and summary (OpenAPI), its routes and its readiness check."""

    title: str
    summary: str
    router: APIRouter
    readiness: Readiness
    direct: Sequence[DirectRoute] = ()
    """Hot endpoints served ahead of FastAPI's routing (service_core.direct_routes)."""


def service_state(request: Request) -> Any:
    """What the service's lifespan yielded (503 while it is still loading)."""
    state = getattr(request.app.state, "service", None)
    if state is None:
        raise ServiceUnavailable("the model is still loading")
    return state


def operations_router(readiness: Readiness) -> APIRouter:
    """``/healthz`` (alive), ``/readyz`` (draining, then the service's own check) and ``/metrics``."""
    ops = APIRouter(tags=["operations"])

    @ops.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @ops.get(
        "/readyz", response_model=ReadinessReport, response_model_exclude_none=True, responses=problem_responses(503)
    )
    async def readyz(request: Request) -> dict[str, Any]:
        """The service accepts work: loaded, not draining, and its own checks pass."""
        if request.app.state.draining:
            raise ServiceUnavailable("the service is shutting down")
        return await readiness(request, service_state(request))

    @ops.get("/metrics", response_class=Response)
    async def metrics(request: Request) -> Response:
        """Prometheus metrics."""
        metrics: ServiceMetrics = request.app.state.metrics
        if metrics.multiprocess_dir is not None:  # NOTE: reads every worker's files, may wait for a lock
            return await run_in_threadpool(metrics_response, metrics)
        return metrics_response(metrics)

    return ops


def create_service_app(
    routes: ServiceRoutes,
    *,
    lifespan: ServiceLifespan,
    metrics: ServiceMetrics,
    body_limit: LimitFor,
    body_timeout_s: float | None = None,
    admission: Admission | None = None,
    opentelemetry: bool = False,
) -> FastAPI:
    """A FastAPI app with the shared skeleton around the service's own routes (``opentelemetry``: FastAPI's
    native OpenTelemetry instrumentation, off unless asked for)."""

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        async with lifespan(app) as state:
            app.state.service = state
            try:
                yield
            finally:
                app.state.draining = True

    app = FastAPI(
        title=routes.title,
        summary=routes.summary,
        version=package_version(),
        lifespan=run,
        docs_url=None,
        redoc_url=None,
        telemetry=None if opentelemetry else {"tracing": False, "metrics": False, "logs": False},
    )
    install_openapi(app, routes.direct)
    # NOTE: a trailing slash is a 404 problem, not an empty 307 to the other spelling.
    app.router.redirect_slashes = False
    app.state.draining = False
    app.state.metrics = metrics
    install_problem_handlers(app)
    if routes.direct:
        # NOTE: the innermost middleware: everything below wraps the direct routes as it wraps FastAPI's.
        app.add_middleware(DirectRoutesMiddleware, routes=routes.direct)
    # NOTE: HEAD runs as GET on every route (FastAPI's, the direct ones, the mounts), inside the request
    # middleware: the access log and the metrics say HEAD.
    app.add_middleware(HeadAsGetMiddleware)
    # NOTE: added early, so it runs inside the request middleware: a refused body is logged and counted.
    app.add_middleware(BodyLimitMiddleware, limit_for=body_limit, timeout_s=body_timeout_s)
    if admission is not None:
        # NOTE: outside the body limit, so a request is admitted (or refused) before its body is read.
        app.add_middleware(AdmissionMiddleware, admission=admission, limit_for=body_limit)
        app.state.admission = admission
    install_request_middleware(app, metrics)
    app.include_router(routes.router)
    app.include_router(operations_router(routes.readiness))
    return app
