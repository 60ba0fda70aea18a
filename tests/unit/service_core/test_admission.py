"""Admission (service_core.admission) of a body that could never fit MAX_BODY_BYTES_IN_FLIGHT: a route's body
limit may be larger than the bytes admitted at once (the cloud's payload limit grows with MAX_BATCH_SIZE:
``--max-batch-size 128`` allows 512 MiB, and 256 MiB are admitted at once). Such a body was answered 503 +
``Retry-After: 1`` ('0 body bytes are in flight; ... more would pass the limit') however long its client
waited: now a declared one is a 413 naming the setting, and one without a length is admitted with the
bound as its limit."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from service_core.admission import Admission, AdmissionMiddleware
from service_core.body_limit import BodyLimitMiddleware
from service_core.problems import install_problem_handlers

ROUTE_LIMIT = 1000
IN_FLIGHT = 400


async def _echo_length(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(len(await request.body())))


def _client() -> TestClient:
    app = Starlette(routes=[Route("/up", _echo_length, methods=["POST"])])
    install_problem_handlers(app)  # type: ignore[arg-type]
    app.add_middleware(BodyLimitMiddleware, limit_for=lambda scope: ROUTE_LIMIT)
    admission = Admission(admits=lambda scope: True, max_body_bytes=IN_FLIGHT)
    app.add_middleware(AdmissionMiddleware, admission=admission, limit_for=lambda scope: ROUTE_LIMIT)
    return TestClient(app)


def test_a_declared_body_over_what_is_admitted_at_once_is_413_not_503() -> None:
    with _client() as client:
        response = client.post("/up", content=b"x" * 500)
        assert response.status_code == 413, response.text
        assert "retry-after" not in response.headers
        assert "MAX_BODY_BYTES_IN_FLIGHT" in response.json()["detail"]
        assert client.post("/up", content=b"x" * IN_FLIGHT).text == str(IN_FLIGHT)


def test_a_body_without_a_length_is_admitted_and_bounded_by_what_is_admitted_at_once() -> None:
    with _client() as client:
        small = client.post("/up", content=iter([b"x" * 100, b"x" * 100]))  # NOTE: chunked
        assert small.status_code == 200 and small.text == "200"
        large = client.post("/up", content=iter([b"x" * 300, b"x" * 300]))
        assert large.status_code == 413, large.text
