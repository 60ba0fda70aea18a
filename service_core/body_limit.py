"""Request bodies bounded where they enter: an ASGI ``receive`` wrapper that counts bytes and times them.

Handlers then read bodies the ordinary way (``request.stream()``, ``request.form(max_files=, max_fields=,
max_part_size=)``); the count cannot be bypassed because every byte of the body comes through ``receive``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service_core.problems import domain_problem
from service_core.raw_headers import header_value
from shared.errors import BadRequest, PayloadTooLarge, RequestTimeout, SplitInferError

__all__ = ["BodyLimitMiddleware", "LimitFor", "declared_length", "limited_receive"]

LimitFor = Callable[[Scope], int | None]
"""The body limit in bytes for a request (``None``: no body expected, the default limit applies)."""

_DEFAULT_LIMIT = 64 * 1024


def limited_receive(receive: Receive, limit: int, timeout_s: float | None = None) -> Receive:
    """``receive`` that raises :class:`PayloadTooLarge` (413) once the body passes ``limit`` bytes, and
    :class:`RequestTimeout` (408) when the whole body has not arrived ``timeout_s`` after it was first asked
    for (a slow or stalled client cannot hold the request's memory and admission slot for longer)."""
    received = 0
    deadline: float | None = None
    complete = False

    async def receive_within_limit() -> Message:
        nonlocal received, deadline, complete
        if timeout_s is None or complete:
            message = await receive()
        else:
            deadline = deadline if deadline is not None else time.monotonic() + timeout_s
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    message = await receive()
            except TimeoutError as exc:
                raise RequestTimeout(f"the request body did not arrive within {timeout_s:g} s") from exc
        if message["type"] == "http.request":
            complete = not message.get("more_body", False)
            received += len(message.get("body", b""))
            if received > limit:
                raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes")
        return message

    return receive_within_limit


class BodyLimitMiddleware:
    """Refuses a declared ``Content-Length`` over the route's limit before any byte is read, and counts the
    bytes that do arrive (chunked bodies, lying headers) against the same limit."""

    def __init__(self, app: ASGIApp, limit_for: LimitFor, timeout_s: float | None = None) -> None:
        self.app = app
        self.limit_for = limit_for
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        limit = _DEFAULT_LIMIT if limit is None else limit
        try:
            _check_declared_length(header_value(scope, b"content-length"), limit)
        except SplitInferError as exc:
            await domain_problem(exc, scope)(scope, receive, send)
            return
        await self.app(scope, limited_receive(receive, limit, self.timeout_s), send)


def declared_length(scope: Scope) -> int | None:
    """The request's ``Content-Length`` when it is a plain ASCII number (``None`` otherwise)."""
    declared = header_value(scope, b"content-length")
    if declared is None or not (declared.isascii() and declared.isdigit()) or len(declared) > 20:
        return None
    return int(declared)


def _check_declared_length(declared: str | None, limit: int) -> None:
    if declared is None:
        return
    # NOTE: ASCII digits only: str.isdigit() also accepts '²', which int() refuses.
    if not (declared.isascii() and declared.isdigit()) or len(declared) > 20:
        raise BadRequest(f"Content-Length {declared[:40]!r} is not a number")
    if int(declared) > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {limit}")
