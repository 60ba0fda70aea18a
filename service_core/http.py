"""Small HTTP helpers both services use: media types, bounded body reading, version info."""

from __future__ import annotations

import importlib.metadata

import torch
from fastapi import Request

from shared.errors import BadRequest, PayloadTooLarge
from shared.tail_timings import BodyArrival
from shared.wire import PROTOCOL_VERSION

__all__ = ["SERVED_BY_HEADER", "media_type", "package_version", "read_limited_body", "versions"]

SERVED_BY_HEADER = "X-Served-By"
"""Names the cloud instance (host:pid; one per Ray Serve replica) that answered a /v1/tail request."""


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


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


def package_version() -> str:
    """This project's installed version (``unknown`` when run from a source tree that is not installed)."""
    try:
        return importlib.metadata.version("split-inference")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def versions() -> dict[str, str]:
    own = package_version()
    import torchvision

    return {
        "split_inference": own,
        "protocol": PROTOCOL_VERSION,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }
