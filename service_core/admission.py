"""Admission before a request's body is read: a bound on requests in progress and on body bytes in flight.

A request to an admitted path takes one slot and reserves :data:`FIRST_RESERVATION` of its body's bytes (or
its whole body when smaller) before any byte of the body is read, and more as its bytes arrive (twice what it
holds each time), up to its ``Content-Length`` or, for a body of unknown length, its route's limit (at most the
bound on body bytes, which is then its limit). Over either bound a request gets 503 + Retry-After at once, or as
its next bytes arrive when they do not fit; a body declared larger than the bound on body bytes alone (it could
never be admitted) gets 413. Reserving what arrives rather than what is declared: a few uploads that declare
20 MiB and trickle would otherwise hold the whole bound while sending nothing. The reservation is released when
the request ends, however it ends. So the memory held by bodies is bounded by the service's settings, whatever
the clients send and however slowly (see also the body timeout, :mod:`service_core.body_limit`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service_core.body_limit import LimitFor, declared_length, limited_receive
from service_core.problems import domain_problem
from shared.errors import PayloadTooLarge, ServiceUnavailable, SplitInferError

__all__ = ["FIRST_RESERVATION", "Admission", "AdmissionMiddleware"]

FIRST_RESERVATION = 64 * 1024
"""What a body of unknown length reserves before its first bytes arrive."""


@dataclass
class Admission:
    """What is admitted now, and the bounds (``None``: unbounded)."""

    admits: Callable[[Scope], bool]
    """Which requests are subject to admission (the others pass untouched)."""
    max_requests: int | None = None
    max_body_bytes: int | None = None
    in_flight: int = 0
    bytes_in_flight: int = 0

    def refusal(self, reserve: int, whole: int | None = None) -> SplitInferError | None:
        """Why a request reserving ``reserve`` body bytes now, of a body of ``whole`` bytes (its declared
        length; default: ``reserve``), is not admitted now (503 + Retry-After), or never (413: more than
        ``max_body_bytes`` alone); None: admitted."""
        whole = reserve if whole is None else whole
        if self.max_body_bytes is not None and whole > self.max_body_bytes:
            return PayloadTooLarge(
                f"the body is {whole} bytes; this service admits at most {self.max_body_bytes} body bytes at "
                "once (MAX_BODY_BYTES_IN_FLIGHT)"
            )
        if self.max_requests is not None and self.in_flight >= self.max_requests:
            return ServiceUnavailable(
                f"{self.in_flight} requests are in progress (the limit is {self.max_requests})", retry_after=1
            )
        if self.max_body_bytes is not None and self.bytes_in_flight + reserve > self.max_body_bytes:
            return ServiceUnavailable(
                f"{self.bytes_in_flight} body bytes are in flight; {reserve} more would pass the limit of "
                f"{self.max_body_bytes}",
                retry_after=1,
            )
        return None


class AdmissionMiddleware:
    """Admits a request (see the module docstring) before the app reads its body."""

    def __init__(self, app: ASGIApp, admission: Admission, limit_for: LimitFor) -> None:
        self.app = app
        self.admission = admission
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        admission = self.admission
        if scope["type"] != "http" or not admission.admits(scope):
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope) or 0
        declared = declared_length(scope)
        held = _Held(0)
        if declared is not None:
            cap = min(declared, limit)
        else:
            # NOTE: a body of unknown length may grow to its route's limit, but never past what is admitted at
            # once: then that bound is its limit (the route's may be larger: the cloud's grows with the batch)
            cap = limit if admission.max_body_bytes is None else min(limit, admission.max_body_bytes)
            if cap < limit:
                receive = limited_receive(receive, cap)
        # NOTE: what has arrived is reserved (and a first share), not what is declared: a few uploads that
        # declare their limit and trickle would otherwise hold the whole bound while sending nothing
        reserve = min(cap, FIRST_RESERVATION)
        if reserve < cap:
            receive = _reserving_as_it_arrives(receive, admission, held, cap)
        refusal = admission.refusal(reserve, cap)
        if refusal is not None:
            await domain_problem(refusal, scope)(scope, receive, send)
            return
        admission.in_flight += 1
        admission.bytes_in_flight += reserve
        held.bytes = reserve
        try:
            await self.app(scope, receive, send)
        finally:
            admission.in_flight -= 1
            admission.bytes_in_flight -= held.bytes


@dataclass
class _Held:
    bytes: int


def _reserving_as_it_arrives(receive: Receive, admission: Admission, held: _Held, cap: int) -> Receive:
    """``receive`` that reserves more of ``admission``'s body bytes as a body of unknown length arrives (twice
    what it holds, at most ``cap``), and raises 503 + Retry-After when they are not free."""
    received = 0

    async def receive_reserving() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > held.bytes:
                wanted = min(cap, max(received, 2 * held.bytes))
                more = wanted - held.bytes
                bound = admission.max_body_bytes
                if bound is not None and admission.bytes_in_flight + more > bound:
                    raise ServiceUnavailable(
                        f"{admission.bytes_in_flight} body bytes are in flight; this body's next {more} would "
                        f"pass the limit of {bound} (MAX_BODY_BYTES_IN_FLIGHT)",
                        retry_after=1,
                    )
                admission.bytes_in_flight += more
                held.bytes = wanted
        return message

    return receive_reserving
