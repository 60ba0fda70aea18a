"""Direct routes: served ahead of FastAPI's routing, with the same errors, metrics and documentation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from starlette.types import Receive, Scope, Send

from service_core.app import ServiceRoutes, create_service_app
from service_core.direct_routes import DirectRoute
from service_core.metrics import ServiceMetrics
from service_core.openapi import operation_problems
from shared.errors import PayloadTooLarge


async def _echo(scope: Scope, receive: Receive, send: Send) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    if body == b"too big":
        raise PayloadTooLarge("the body is too big")
    if body == b"bug":
        raise RuntimeError("a bug in the handler")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


def _app() -> tuple[FastAPI, ServiceMetrics]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[object]:
        yield object()

    async def ready(request: Any, state: Any) -> dict[str, Any]:
        return {"status": "ready"}

    operation = {"summary": "Echo", "responses": {"200": {"description": "The body."}, **operation_problems(413)}}
    routes = ServiceRoutes("t", "t", APIRouter(), ready, direct=(DirectRoute("/v1/echo", _echo, operation),))
    metrics = ServiceMetrics("test")
    return create_service_app(routes, lifespan=lifespan, metrics=metrics, body_limit=lambda scope: 64), metrics


def _post(app: FastAPI, path: str, body: bytes, method: str = "POST") -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.request(method, path, content=body)

    return asyncio.run(go())


def test_a_direct_route_answers_and_is_counted_under_its_path() -> None:
    app, metrics = _app()
    response = _post(app, "/v1/echo", b"hello")
    assert response.status_code == 200 and response.content == b"hello"
    assert response.headers["x-request-id"]
    counted = metrics.registry.get_sample_value(
        "splitinfer_requests_total", {"route": "/v1/echo", "method": "POST", "status": "200"}
    )
    assert counted == 1


def test_its_errors_are_problems_and_the_body_limit_still_applies() -> None:
    app, _ = _app()
    refused = _post(app, "/v1/echo", b"too big")
    assert refused.status_code == 413 and refused.headers["content-type"] == "application/problem+json"
    over_limit = _post(app, "/v1/echo", b"x" * 65)  # NOTE: the body limit wraps the direct route
    assert over_limit.status_code == 413 and over_limit.json()["status"] == 413
    bug = _post(app, "/v1/echo", b"bug")
    assert bug.status_code == 500 and bug.headers["content-type"] == "application/problem+json"
    assert bug.json()["type"].endswith("/internal") and "bug" not in bug.text  # NOTE: no internals leak


def test_another_method_is_405_with_allow() -> None:
    app, _ = _app()
    response = _post(app, "/v1/echo", b"", method="GET")
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert response.headers["content-type"] == "application/problem+json"


def test_its_operation_is_in_the_openapi_schema_with_problem_responses() -> None:
    app, _ = _app()
    operation = app.openapi()["paths"]["/v1/echo"]["post"]
    assert operation["summary"] == "Echo"
    assert "application/problem+json" in operation["responses"]["413"]["content"]
    assert _post(app, "/healthz", b"", method="GET").status_code == 200  # NOTE: other routes reach FastAPI


def test_a_trailing_slash_on_a_direct_route_is_a_404_naming_it() -> None:
    # Before: the cloud's `POST /v1/tail/` was a bare "Not Found", where every FastAPI route of both services
    # (and the README) names the route without the slash.
    app, _ = _app()
    response = _post(app, "/v1/echo/", b"hello")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == "no route /v1/echo/; drop the trailing slash: /v1/echo"


def test_an_app_with_direct_routes_runs_its_lifespan() -> None:
    # NOTE: the lifespan scope has no path: reading one there failed the startup, and uvicorn then serves
    # without a lifespan (the cloud's model never loaded: "still loading" for ever).
    started: list[bool] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[object]:
        started.append(True)
        yield object()

    async def ready(request: Any, state: Any) -> dict[str, Any]:
        return {"status": "ready"}

    routes = ServiceRoutes("t", "t", APIRouter(), ready, direct=(DirectRoute("/v1/echo", _echo),))
    app = create_service_app(routes, lifespan=lifespan, metrics=ServiceMetrics("test"), body_limit=lambda scope: 64)
    with TestClient(app) as client:
        assert started == [True]
        assert client.post("/v1/echo", content=b"hi").content == b"hi"
