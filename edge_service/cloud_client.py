"""The edge's client for the cloud: one pooled client (httpx's interface over aiohttp, see
edge_service.cloud_transport), errors translated to domain errors."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from edge_service.breaker import CircuitBreaker
from edge_service.cloud_transport import AiohttpTransport
from service_core.http import SERVED_BY_HEADER
from service_core.metrics import REQUEST_ID_HEADER
from service_core.serving import dropped_connection_hint, tls_client_context
from shared.errors import (
    BadGateway,
    CloudModelMismatch,
    CloudTimeout,
    CloudUnavailable,
    PayloadRefused,
    SplitInferError,
)
from shared.peer_text import MAX_DETAIL_CHARS, problem_detail, sanitize
from shared.tail_timings import TailTimings
from shared.wire import MEDIA_TYPE

__all__ = ["MAX_DETAIL_CHARS", "POOL_KEEPALIVE_S", "CloudClient", "CloudReply", "sanitize"]


MAX_ERROR_BODY_BYTES = 64 * 1024
"""The most of a cloud's error reply the edge reads."""
_MAX_RETRY_AFTER_S = 3600
_REFUSALS = (400, 413, 415, 422)
"""What a cloud that is up answers a payload it cannot use (PayloadRefused: no failure for the breaker)."""
POOL_KEEPALIVE_S = 30.0
"""How long the edge keeps an idle connection to the cloud for the next request (the cloud keeps its
end open longer: ``CloudSettings.keep_alive_s``)."""


@dataclass(frozen=True)
class CloudReply:
    body: bytes
    timings: TailTimings
    round_trip_ms: float
    served_by: str | None = None


def _retry_after(header: str) -> float | None:
    """A peer's ``Retry-After`` in seconds (ASCII digits only: ``str.isdigit()`` also accepts '²')."""
    header = header.strip()
    if not (header.isascii() and header.isdigit()) or len(header) > 6:
        return None
    return float(min(int(header), _MAX_RETRY_AFTER_S))


class CloudClient:
    """Calls the cloud's ``/v1/tail`` and ``/v1/info``: pooled, authenticated, with bounded retries of
    refused connections (nothing was sent, so a retry is safe), one resend when a connection drops before
    any reply (most often a kept-alive connection closed by the other end as the request went out), and a
    circuit breaker."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        token: str | None = None,
        ca_bundle: str | None = None,
        connect_retries: int = 2,
        breaker: CircuitBreaker | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.connect_retries = connect_retries
        self.breaker = breaker or CircuitBreaker(failures=5, reset_s=5.0)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        context = tls_client_context(ca_bundle)
        transport = transport or AiohttpTransport(
            ssl_context=context, max_connections=256, keepalive_s=POOL_KEEPALIVE_S
        )
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
            transport=transport,
        )
        # NOTE: /v1/tail, every request's path, goes straight to aiohttp when that is the transport (tests
        # pass httpx.MockTransport and take httpx's path): the same pool, headers and errors.
        self._direct = transport if isinstance(transport, AiohttpTransport) else None
        self._tail_url = self.base_url + "/v1/tail"
        self._auth = headers
        self._connect_s, self._read_s = connect_timeout_s, read_timeout_s

    async def aclose(self) -> None:
        await self._client.aclose()

    async def run_tail(self, payload: bytes, *, request_id: str, deadline_s: float, max_reply_bytes: int) -> CloudReply:
        """POST the payload to ``/v1/tail``; every failure becomes a domain error (502/503/504).

        The reply is read as a stream of at most ``max_reply_bytes`` (an error reply: of at most
        :data:`MAX_ERROR_BODY_BYTES`), in no content encoding but ``identity``.
        """
        async with self.breaker.call():
            try:
                async with asyncio.timeout(deadline_s):
                    status, headers, body, started = await self._post_with_retries(payload, request_id, max_reply_bytes)
            except TimeoutError as exc:
                raise CloudTimeout(f"the cloud did not answer within the {deadline_s:.1f} s deadline") from exc
            self._raise_for_status(status, headers, body)
        # NOTE: the attempt that was answered only: a refused or dropped one before it would tell the link
        # estimate and the cut selector of a round trip the payload never made
        round_trip_ms = (time.perf_counter() - started) * 1000
        timings = TailTimings.parse(headers.get("server-timing", "")).consistent_with(round_trip_ms, len(payload))
        served_by = headers.get(SERVED_BY_HEADER)
        return CloudReply(body, timings, round_trip_ms, sanitize(served_by, 100) if served_by is not None else None)

    async def _post_with_retries(
        self, payload: bytes, request_id: str, max_reply_bytes: int
    ) -> tuple[int, Mapping[str, str], bytes, float]:
        """The reply's status, headers and body, and when (``time.perf_counter()``: uvloop's loop.time()
        counts whole milliseconds) the attempt that got it started."""
        headers = {
            "Content-Type": MEDIA_TYPE,
            "Accept": MEDIA_TYPE,
            "Accept-Encoding": "identity",
            REQUEST_ID_HEADER: request_id,
        }
        attempt = 0
        resent = False
        while True:
            replied = False
            started = time.perf_counter()
            try:
                if self._direct is not None:
                    async with self._direct.post(
                        self._tail_url, payload, self._auth | headers, connect_s=self._connect_s, read_s=self._read_s
                    ) as reply:
                        replied = True
                        limit = max_reply_bytes if reply.status == 200 else MAX_ERROR_BODY_BYTES
                        body = await _read_bounded(reply.headers, reply.chunks, limit, truncate=reply.status != 200)
                        return reply.status, reply.headers, body, started
                async with self._client.stream("POST", "/v1/tail", content=payload, headers=headers) as response:
                    replied = True
                    if response.status_code == 200:
                        body = await _read_bounded_response(response, max_reply_bytes)
                    else:  # NOTE: only its detail is used: the start of it is enough
                        body = await _read_bounded_response(response, MAX_ERROR_BODY_BYTES, truncate=True)
                    return response.status_code, response.headers, body, started
            except httpx.ConnectError as exc:
                # NOTE: a refused connection sent nothing, so retrying cannot run the tail twice.
                if attempt >= self.connect_retries:
                    raise CloudUnavailable(
                        f"cannot connect to the cloud at {self.base_url}: {sanitize(str(exc))}"
                    ) from exc
                await asyncio.sleep(random.uniform(0.05, 0.15) * 2**attempt)
                attempt += 1
            except httpx.TimeoutException as exc:
                raise CloudTimeout(f"the cloud at {self.base_url} timed out ({type(exc).__name__})") from exc
            except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                # NOTE: a connection that drops before any reply is most often a kept-alive one the cloud
                # (or a proxy) closed as this request went out: sent once more (a tail is a pure function,
                # so even one that ran is safe to run again). Otherwise the cloud died or restarted.
                if not replied and not resent:
                    resent = True
                    continue
                raise CloudUnavailable(
                    f"the cloud dropped the connection: {type(exc).__name__}: {sanitize(str(exc))}"
                    f"{dropped_connection_hint(self.base_url)}"
                ) from exc
            except httpx.HTTPError as exc:
                raise BadGateway(
                    f"the exchange with the cloud failed: {type(exc).__name__}: {sanitize(str(exc))}"
                ) from exc

    @staticmethod
    def _raise_for_status(status: int, headers: Mapping[str, str], body: bytes) -> None:
        if status == 200:
            return
        detail = problem_detail(body)
        error: SplitInferError
        if status == 409:
            # NOTE: the cloud's "this side" is the cloud: said so, the edge's reply names both sides
            error = CloudModelMismatch(
                f"the cloud at this edge's CLOUD_URL serves another model, weights or cuts (give both services "
                f"the same model settings); it refused the payload: {detail}"
            )
        elif status == 401:
            error = BadGateway(f"the cloud refused this edge's token (set the same SPLITINFER_TOKEN on both): {detail}")
        elif status == 503:
            retry = _retry_after(headers.get("retry-after", ""))
            error = CloudUnavailable(f"the cloud is unavailable: {detail}", retry_after=retry)
        elif status in (408, 504):
            # NOTE: 408 is a timeout on the way (Ray Serve's proxy answers it when its request_timeout_s passes),
            # as is the cloud's own 408 (this edge's upload did not arrive within its BODY_TIMEOUT_S)
            error = CloudTimeout(f"the cloud timed out: {detail}")
        elif status in _REFUSALS:
            error = PayloadRefused(f"the cloud refused the payload ({status}): {detail}")
        else:
            error = BadGateway(f"the cloud answered {status}: {detail}")
        raise error

    async def info(self, timeout_s: float = 2.0) -> dict[str, Any]:
        try:
            async with self._client.stream(
                "GET", "/v1/info", timeout=timeout_s, headers={"Accept-Encoding": "identity"}
            ) as response:
                body = await _read_bounded_response(response, MAX_ERROR_BODY_BYTES)
                status, headers = response.status_code, response.headers
        except httpx.TimeoutException as exc:
            raise CloudTimeout(f"the cloud at {self.base_url} did not answer /v1/info in time") from exc
        except httpx.HTTPError as exc:
            hint = "" if isinstance(exc, httpx.ConnectError) else dropped_connection_hint(self.base_url)
            raise CloudUnavailable(f"cannot reach the cloud at {self.base_url}: {sanitize(str(exc))}{hint}") from exc
        self._raise_for_status(status, headers, body)
        try:
            info = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise BadGateway("the cloud's /v1/info is not JSON") from exc
        if not isinstance(info, dict):
            raise BadGateway("the cloud's /v1/info is not a JSON object")
        return info


async def _read_bounded_response(response: httpx.Response, limit: int, *, truncate: bool = False) -> bytes:
    """:func:`_read_bounded` of an httpx response."""
    if response.is_stream_consumed:  # NOTE: an in-process transport (tests) hands over a body already read
        _check_reply_headers(response.headers, limit, truncate)
        if truncate:
            return response.content[:limit]
        if len(response.content) > limit:
            raise BadGateway(f"the cloud's reply exceeds the limit of {limit} bytes")
        return response.content
    return await _read_bounded(response.headers, response.aiter_raw(), limit, truncate=truncate)


def _check_reply_headers(headers: Mapping[str, str], limit: int, truncate: bool) -> None:
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise BadGateway(
            f"the cloud's reply has Content-Encoding {sanitize(encoding, 40)!r}; this edge asked for identity"
        )
    declared = headers.get("content-length")
    if not truncate and declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise BadGateway(f"the cloud's reply declares {sanitize(declared, 24)} bytes; the limit is {limit}")


async def _read_bounded(
    headers: Mapping[str, str], chunks: AsyncIterator[bytes], limit: int, *, truncate: bool = False
) -> bytes:
    """The reply's body as sent (no decoding), refused (502) past ``limit`` bytes (``truncate``: its first
    ``limit`` bytes) or in an encoding we did not ask for: a small compressed reply can inflate to any size."""
    _check_reply_headers(headers, limit, truncate)
    received_chunks: list[bytes] = []
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > limit and truncate:
            received_chunks.append(chunk[: limit - (received - len(chunk))])
            break
        if received > limit:
            raise BadGateway(f"the cloud's reply exceeds the limit of {limit} bytes")
        received_chunks.append(chunk)
    return b"".join(received_chunks)
