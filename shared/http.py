"""Small HTTP helpers both services use: bounded body reading, Server-Timing, version info."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping

import torch
from fastapi import Request

from shared.errors import BadRequest, PayloadTooLarge
from shared.wire import PROTOCOL_VERSION

__all__ = ["SERVED_BY_HEADER", "media_type", "read_limited_body", "server_timing", "versions"]

SERVED_BY_HEADER = "X-Served-By"
"""Names the cloud instance (host:pid; one per Ray Serve replica) that answered a /v1/tail request."""


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_limited_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it exceeds ``limit`` bytes, whatever Content-Length says."""
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
    return b"".join(chunks)


def server_timing(timings_ms: Mapping[str, float]) -> str:
    return ", ".join(f"{name};dur={value:.2f}" for name, value in timings_ms.items())


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
