"""Request bodies bounded where they enter: an ASGI ``receive`` wrapper that counts bytes.

Handlers then read bodies the ordinary way (``request.stream()``, ``request.form(max_files=, max_fields=,
max_part_size=)``); the count cannot be bypassed because every byte of the body comes through ``receive``.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service_core.http import header_value
from service_core.problems import domain_problem
from shared.errors import BadRequest, PayloadTooLarge, SplitInferError

__all__ = ["BodyLimitMiddleware", "LimitFor", "limited_receive"]

LimitFor = Callable[[Scope], int | None]
"""The body limit in bytes for a request (``None``: no body expected, the default limit applies)."""

_DEFAULT_LIMIT = 64 * 1024


def limited_receive(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises :class:`PayloadTooLarge` (413) once the body passes ``limit`` bytes."""
    received = 0

    async def receive_within_limit() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes")
        return message

    return receive_within_limit


class BodyLimitMiddleware:
    """Refuses a declared ``Content-Length`` over the route's limit before any byte is read, and counts the
    bytes that do arrive (chunked bodies, lying headers) against the same limit."""

    def __init__(self, app: ASGIApp, limit_for: LimitFor) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        limit = _DEFAULT_LIMIT if limit is None else limit
        try:
            _check_declared_length(header_value(scope, b"content-length"), limit)
        except SplitInferError as exc:
            await domain_problem(exc)(scope, receive, send)
            return
        await self.app(scope, limited_receive(receive, limit), send)


def _check_declared_length(declared: str | None, limit: int) -> None:
    if declared is None:
        return
    # NOTE: ASCII digits only: str.isdigit() also accepts '²', which int() refuses.
    if not (declared.isascii() and declared.isdigit()) or len(declared) > 20:
        raise BadRequest(f"Content-Length {declared[:40]!r} is not a number")
    if int(declared) > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {limit}")
