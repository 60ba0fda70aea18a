"""Admission (service_core.admission) of a body that could never fit MAX_BODY_BYTES_IN_FLIGHT: a route's body
limit may be larger than the bytes admitted at once (the cloud's payload limit grows with MAX_BATCH_SIZE:
``--max-batch-size 128`` allows 512 MiB, and 256 MiB are admitted at once). Such a body was answered 503 +
``Retry-After: 1`` ('0 body bytes are in flight; ... more would pass the limit') however long its client
waited: now a declared one is a 413 naming the setting, and one without a length is admitted with the
bound as its limit."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from service_core.admission import FIRST_RESERVATION, Admission, AdmissionMiddleware
from service_core.body_limit import BodyLimitMiddleware
from service_core.problems import install_problem_handlers
from shared.errors import ServiceUnavailable

ROUTE_LIMIT = 1000
IN_FLIGHT = 400
MIB = 1024 * 1024


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


def _upload(
    admission: Admission, chunks: list[bytes], hold: asyncio.Event, declared: int | None
) -> Callable[[], Coroutine[Any, Any, int]]:
    """A POST through admission, of ``declared`` bytes (None: chunked): ``chunks``, then (``hold`` set) the
    end of its body; its status."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass
        await PlainTextResponse("read")(scope, receive, send)

    middleware = AdmissionMiddleware(app, admission, limit_for=lambda scope: 2 * MIB)

    async def upload() -> int:
        pending = [{"type": "http.request", "body": chunk, "more_body": True} for chunk in chunks]
        statuses: list[int] = []

        async def receive() -> Message:
            if pending:
                return pending.pop(0)
            await hold.wait()
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        headers = [] if declared is None else [(b"content-length", str(declared).encode())]
        scope = {"type": "http", "method": "POST", "path": "/up", "headers": headers, "query_string": b""}
        try:
            await middleware(scope, receive, send)
        except ServiceUnavailable:
            return 503
        return statuses[0]

    return upload


@pytest.mark.parametrize("declared", [False, True], ids=["chunked", "declared"])
def test_uploads_reserve_what_arrives_not_what_they_may_send(declared: bool) -> None:
    """Each upload reserved its declared length (a chunked one: its route's limit, at most the bound) before
    sending anything: six that declared 20 MiB and trickled held the edge's 128 MiB for BODY_TIMEOUT_S while
    every other upload got 503. Now each reserves FIRST_RESERVATION and more as its bytes arrive; one whose
    next bytes do not fit gets 503 then."""

    def upload(chunks: list[bytes], hold: asyncio.Event, length: int) -> Callable[[], Coroutine[Any, Any, int]]:
        return _upload(admission, chunks, hold, length if declared else None)

    async def scenario() -> tuple[list[int], int, list[int]]:
        hold = asyncio.Event()
        trickling = [asyncio.create_task(upload([b"x"], hold, MIB)()) for _ in range(6)]
        await asyncio.sleep(0.01)
        held_by_six = admission.bytes_in_flight
        large = asyncio.create_task(upload([b"x" * 250_000] * 2, hold, 500_001)())
        await asyncio.sleep(0.01)
        too_much = await asyncio.wait_for(upload([b"x" * 200_000], hold, 200_001)(), 5)
        hold.set()
        done = await asyncio.gather(*trickling, large)
        return done, held_by_six, [too_much, admission.bytes_in_flight]

    admission = Admission(admits=lambda scope: True, max_body_bytes=MIB)
    statuses, held_by_six, (too_much, left) = asyncio.run(scenario())
    assert held_by_six == 6 * FIRST_RESERVATION
    assert statuses == [200] * 7  # NOTE: the 500 KB upload grew beside the six
    assert too_much == 503 and left == 0
