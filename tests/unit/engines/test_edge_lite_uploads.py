"""The torch-free edge bounds uploads as the torch edge does: a body that stalls gets 408 after BODY_TIMEOUT_S
(its request slot and its bytes freed), and the body bytes admitted at once are bounded by
MAX_BODY_BYTES_IN_FLIGHT before any body is read (503 + Retry-After beyond). Driven as ASGI in process, with
bodies that stall for good (what a hostile client on a real socket does, tests/e2e/test_torch_free_edge.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from starlette.types import Message

from edge_lite.app import create_app
from edge_lite.settings import EdgeLiteSettings

MIB = 1024 * 1024
GUARD_S = 10.0
"""How long a test waits for an answer before it calls the request wedged (no answer is timed)."""


@asynccontextmanager
async def _running(tiny_export: Path, **settings: float) -> AsyncIterator[FastAPI]:
    app = create_app(EdgeLiteSettings(onnx_dir=tiny_export, **settings))  # type: ignore[arg-type]
    async with app.router.lifespan_context(app):
        yield app


async def _upload(app: FastAPI, declared: int, sent: bytes, stall: bool) -> tuple[int, dict[str, str]]:
    """POST /v1/classify declaring ``declared`` bytes and sending ``sent``; with ``stall`` the rest never
    comes. The status and headers of the answer."""
    started: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
    chunks = [{"type": "http.request", "body": sent, "more_body": stall}]

    async def receive() -> Message:
        if chunks:
            return chunks.pop(0)
        await asyncio.Event().wait()  # NOTE: a client that sends no more (and never leaves)
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start" and not started.done():
            started.set_result(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/classify",
        "raw_path": b"/v1/classify",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"image/png"), (b"content-length", str(declared).encode())],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    task = asyncio.create_task(app(scope, receive, send))
    try:
        start = await asyncio.wait_for(asyncio.shield(started), GUARD_S)
    except TimeoutError:
        task.cancel()
        raise AssertionError(f"no answer within {GUARD_S} s: the upload holds the edge") from None
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    if not stall:
        await asyncio.wait_for(task, GUARD_S)
    return int(start["status"]), headers


def test_a_stalled_upload_gets_408_and_frees_its_request_slot(tiny_export: Path) -> None:
    """One request slot, held by an upload that stops halfway: it gets 408 after BODY_TIMEOUT_S, and the
    next request is served (before: the slot was held for as long as the client kept its connection, and
    every other request got 503 'too many requests in progress')."""

    async def scenario() -> tuple[int, int]:
        async with _running(tiny_export, max_concurrent_requests=1, body_timeout_s=0.5) as app:
            stalled, _ = await _upload(app, 1000, b"\x89PNG", stall=True)
            after, _ = await _upload(app, 3, b"abc", stall=False)
            return stalled, after

    stalled, after = asyncio.run(scenario())
    assert stalled == 408
    assert after == 415  # NOTE: served (not an image), not refused for want of a slot


def test_upload_bytes_in_flight_are_bounded_before_the_body_is_read(tiny_export: Path) -> None:
    """Two 20 MiB uploads held by slow clients after all but their last byte fill MAX_BODY_BYTES_IN_FLIGHT
    (40 MiB here): a third declared upload gets 503 + Retry-After before its body is read (before: every one
    of MAX_CONCURRENT_REQUESTS, 64, uploads was read into memory however many bytes were already held:
    1.3 GiB on a device the decode budget keeps to 256 MiB). Bytes are reserved as they arrive
    (service_core.admission): uploads that declare 20 MiB and send nothing hold little."""

    async def scenario() -> tuple[int, dict[str, str]]:
        async with _running(tiny_export, max_body_bytes_in_flight=40 * MIB, body_timeout_s=60) as app:
            almost = b"\x89PNG" + bytes(20 * MIB - 5)
            held = [asyncio.create_task(_upload(app, 20 * MIB, almost, stall=True)) for _ in range(2)]
            for _ in range(1000):  # NOTE: both have sent their bytes before the third arrives
                if app.state.admission.bytes_in_flight >= 2 * len(almost):
                    break
                await asyncio.sleep(0.01)
            try:
                return await _upload(app, 20 * MIB, b"\x89PNG", stall=False)
            finally:
                for task in held:
                    task.cancel()

    status, headers = asyncio.run(scenario())
    assert status == 503
    assert headers["retry-after"] == "1"
