"""The edge's client for the cloud: one pooled httpx client, errors translated to domain errors."""

from __future__ import annotations

import asyncio
import random
import ssl
from dataclasses import dataclass
from typing import Any

import httpx

from edge_service.breaker import CircuitBreaker
from service_core.http import SERVED_BY_HEADER
from service_core.metrics import REQUEST_ID_HEADER
from shared.errors import (
    BadGateway,
    CloudTimeout,
    CloudUnavailable,
    ModelMismatch,
    SplitInferError,
)
from shared.tail_timings import TailTimings
from shared.wire import MEDIA_TYPE

__all__ = ["CloudClient", "CloudReply"]


@dataclass(frozen=True)
class CloudReply:
    body: bytes
    timings: TailTimings
    round_trip_ms: float
    served_by: str | None = None


def _problem_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return detail
    return str(body)[:200]


class CloudClient:
    """Calls the cloud's ``/v1/tail`` and ``/v1/info``: pooled, authenticated, with bounded retries of
    refused connections (nothing was sent, so a retry is safe) and a circuit breaker."""

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
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else True
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            verify=verify,
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64, keepalive_expiry=30),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def run_tail(self, payload: bytes, *, request_id: str, deadline_s: float) -> CloudReply:
        """POST the payload to ``/v1/tail``; every failure becomes a domain error (502/503/504/409)."""
        self.breaker.before_call()
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(deadline_s):
                response = await self._post_with_retries(payload, request_id)
            self._raise_for_status(response)
        except (CloudUnavailable, CloudTimeout, BadGateway):
            self.breaker.record_failure()
            raise
        except SplitInferError:
            self.breaker.record_success()  # the cloud is up; it refused this payload (409)
            raise
        except TimeoutError as exc:
            self.breaker.record_failure()
            raise CloudTimeout(f"the cloud did not answer within the {deadline_s:.1f} s deadline") from exc
        self.breaker.record_success()
        round_trip_ms = (loop.time() - started) * 1000
        timings = TailTimings.parse(response.headers.get("server-timing", ""))
        return CloudReply(response.content, timings, round_trip_ms, response.headers.get(SERVED_BY_HEADER))

    async def _post_with_retries(self, payload: bytes, request_id: str) -> httpx.Response:
        headers = {"Content-Type": MEDIA_TYPE, "Accept": MEDIA_TYPE, REQUEST_ID_HEADER: request_id}
        for attempt in range(self.connect_retries + 1):
            try:
                return await self._client.post("/v1/tail", content=payload, headers=headers)
            except httpx.ConnectError as exc:
                # NOTE: a refused connection sent nothing, so retrying cannot run the tail twice.
                if attempt == self.connect_retries:
                    raise CloudUnavailable(f"cannot connect to the cloud at {self.base_url}: {exc}") from exc
                await asyncio.sleep(random.uniform(0.05, 0.15) * 2**attempt)
            except httpx.TimeoutException as exc:
                raise CloudTimeout(f"the cloud at {self.base_url} timed out ({type(exc).__name__})") from exc
            except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                # NOTE: the connection dropped mid-request: the cloud died or restarted.
                raise CloudUnavailable(f"the cloud dropped the connection: {type(exc).__name__}: {exc}") from exc
            except httpx.TransportError as exc:
                raise BadGateway(f"the connection to the cloud failed: {type(exc).__name__}: {exc}") from exc
        raise CloudUnavailable(f"cannot connect to the cloud at {self.base_url}")

    @staticmethod
    def _raise_for_status(response: httpx.Response) -> None:
        if response.status_code == 200:
            return
        detail = _problem_detail(response)
        error: SplitInferError
        if response.status_code == 409:
            error = ModelMismatch(f"the cloud refused the payload: {detail}")
        elif response.status_code == 401:
            error = BadGateway(f"the cloud refused this edge's token (set the same SPLITINFER_TOKEN on both): {detail}")
        elif response.status_code == 503:
            retry = response.headers.get("retry-after", "")
            error = CloudUnavailable(
                f"the cloud is unavailable: {detail}", retry_after=float(retry) if retry.isdigit() else None
            )
        elif response.status_code == 504:
            error = CloudTimeout(f"the cloud timed out: {detail}")
        else:
            error = BadGateway(f"the cloud answered {response.status_code}: {detail}")
        raise error

    async def info(self, timeout_s: float = 2.0) -> dict[str, Any]:
        try:
            response = await self._client.get("/v1/info", timeout=timeout_s)
        except httpx.TimeoutException as exc:
            raise CloudTimeout(f"the cloud at {self.base_url} did not answer /v1/info in time") from exc
        except httpx.TransportError as exc:
            raise CloudUnavailable(f"cannot reach the cloud at {self.base_url}: {exc}") from exc
        self._raise_for_status(response)
        try:
            info = response.json()
        except ValueError as exc:
            raise BadGateway("the cloud's /v1/info is not JSON") from exc
        if not isinstance(info, dict):
            raise BadGateway("the cloud's /v1/info is not a JSON object")
        return info
