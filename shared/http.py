"""Small HTTP helpers both services use: bounded body reading, Server-Timing, version info."""

from __future__ import annotations

import importlib.metadata
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from fastapi import Request

from shared.errors import BadRequest, PayloadTooLarge
from shared.wire import PROTOCOL_VERSION

__all__ = ["SERVED_BY_HEADER", "BodyArrival", "media_type", "read_limited_body", "server_timing", "versions"]

SERVED_BY_HEADER = "X-Served-By"
"""Names the cloud instance (host:pid; one per Ray Serve replica) that answered a /v1/tail request."""


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


@dataclass
class BodyArrival:
    """When a request body's chunks arrived (``time.perf_counter``): the first one, and the rest after it.

    The rest is what times a link's rate: its first bytes often arrive at once (a token bucket's burst,
    the start of the body read together with the headers), so the whole body over its whole time
    overrates the link, the more so the smaller the body.
    """

    first_at: float = 0.0
    first_bytes: int = 0
    last_at: float = 0.0
    total_bytes: int = 0

    def add(self, size: int) -> None:
        now = time.perf_counter()
        if self.total_bytes == 0:
            self.first_at, self.first_bytes = now, size
        self.last_at, self.total_bytes = now, self.total_bytes + size

    @property
    def streamed_bytes(self) -> int:
        """The bytes after the first chunk."""
        return self.total_bytes - self.first_bytes

    @property
    def streamed_ms(self) -> float:
        """How long the bytes after the first chunk took to arrive."""
        return (self.last_at - self.first_at) * 1000


async def read_limited_body(request: Request, limit: int, arrival: BodyArrival | None = None) -> bytes:
    """The request body, refusing (413) as soon as it exceeds ``limit`` bytes, whatever Content-Length says
    (``arrival``, if given, records when its chunks came)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest(f"Content-Length {declared!r} is not a number")
        if int(declared) > limit:
            raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if arrival is not None and chunk:
            arrival.add(len(chunk))
    return b"".join(chunks)


def server_timing(timings_ms: Mapping[str, float], descriptions: Mapping[str, str] | None = None) -> str:
    """A ``Server-Timing`` header value: ``name;dur=ms``, with ``;desc="..."`` where one is given."""
    descriptions = descriptions or {}
    return ", ".join(
        f"{name};dur={value:.2f}" + (f';desc="{descriptions[name]}"' if name in descriptions else "")
        for name, value in timings_ms.items()
    )


def versions() -> dict[str, str]:
    try:
        own = importlib.metadata.version("split-inference")
    except importlib.metadata.PackageNotFoundError:
        own = "unknown"
    import torchvision

    return {
        "split_inference": own,
        "protocol": PROTOCOL_VERSION,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }
