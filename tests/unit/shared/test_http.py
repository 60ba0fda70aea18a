"""Body reading times its chunks (the link's rate is timed after the first) and holds its limit."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.requests import Request

from service_core.http import read_limited_body
from shared.errors import PayloadTooLarge
from shared.tail_timings import BodyArrival


def _request(chunks: list[bytes], gap_s: float) -> Request:
    pending = list(chunks)

    async def receive() -> dict[str, Any]:
        chunk = pending.pop(0)
        if len(pending) < len(chunks) - 1:
            await asyncio.sleep(gap_s)  # the first chunk is there at once; the others trickle in
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    return Request({"type": "http", "method": "POST", "headers": []}, receive)


def test_the_arrival_of_the_body_after_its_first_chunk_is_timed() -> None:
    arrival = BodyArrival()
    body = asyncio.run(read_limited_body(_request([b"a" * 16_000, b"b" * 30_000, b"c" * 30_000], 0.02), 10**6, arrival))
    assert len(body) == 76_000 and body.startswith(b"a" * 16_000) and body.endswith(b"c" * 30_000)
    assert (arrival.total_bytes, arrival.first_bytes, arrival.streamed_bytes) == (76_000, 16_000, 60_000)
    assert 40 <= arrival.streamed_ms < 200  # two gaps of 20 ms; the first chunk's arrival is not counted


def test_the_limit_holds_whatever_the_chunks() -> None:
    with pytest.raises(PayloadTooLarge):
        asyncio.run(read_limited_body(_request([b"x" * 600, b"x" * 600], 0.0), 1_000, BodyArrival()))
