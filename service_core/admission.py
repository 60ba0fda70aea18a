"""Admission before a request's body is read: a bound on requests in progress and on body bytes in flight.

A request to an admitted path reserves one slot and its body's bytes (its ``Content-Length``, or the
route's body limit when none is declared, at most the bound on body bytes, which is then its limit) before any
byte of the body is read; over either bound it gets 503 + Retry-After at once, and a body declared larger than
the bound on body bytes alone (it could never be admitted) gets 413. The reservation is released when the
request ends, however it ends. So the memory held by bodies is bounded by the service's settings,
whatever the clients send and however slowly (see also the body timeout, :mod:`service_core.body_limit`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from service_core.body_limit import LimitFor, declared_length, limited_receive
from service_core.problems import domain_problem
from shared.errors import PayloadTooLarge, ServiceUnavailable, SplitInferError

__all__ = ["Admission", "AdmissionMiddleware"]


@dataclass
class Admission:
    """What is admitted now, and the bounds (``None``: unbounded)."""

    admits: Callable[[Scope], bool]
    """Which requests are subject to admission (the others pass untouched)."""
    max_requests: int | None = None
    max_body_bytes: int | None = None
    in_flight: int = 0
    bytes_in_flight: int = 0

    def refusal(self, reserve: int) -> SplitInferError | None:
        """Why a request reserving ``reserve`` body bytes is not admitted now (503 + Retry-After), or never
        (413: more than ``max_body_bytes`` alone); None: admitted."""
        if self.max_body_bytes is not None and reserve > self.max_body_bytes:
            return PayloadTooLarge(
                f"the body is {reserve} bytes; this service admits at most {self.max_body_bytes} body bytes at "
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
        if declared is not None:
            reserve = min(declared, limit)
        else:
            # NOTE: a body of unknown length reserves its route's limit, but never more than is admitted at
            # once: then that bound is its limit (the route's may be larger: the cloud's grows with the batch)
            reserve = limit if admission.max_body_bytes is None else min(limit, admission.max_body_bytes)
            if reserve < limit:
                receive = limited_receive(receive, reserve)
        refusal = admission.refusal(reserve)
        if refusal is not None:
            await domain_problem(refusal, scope)(scope, receive, send)
            return
        admission.in_flight += 1
        admission.bytes_in_flight += reserve
        try:
            await self.app(scope, receive, send)
        finally:
            admission.in_flight -= 1
            admission.bytes_in_flight -= reserve
