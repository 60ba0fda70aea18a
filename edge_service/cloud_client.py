"""The edge's client for the cloud: one pooled httpx client, errors translated to domain errors."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx

from shared.errors import (
    BadGateway,
    CloudTimeout,
    CloudUnavailable,
    ModelMismatch,
    SplitInferError,
)
from shared.metrics import REQUEST_ID_HEADER
from shared.wire import MEDIA_TYPE

__all__ = ["CloudClient", "CloudReply"]


@dataclass(frozen=True)
class CloudReply:
    body: bytes
    server_timing: dict[str, float]
    round_trip_ms: float


def _parse_server_timing(header: str) -> dict[str, float]:
    timings: dict[str, float] = {}
    for entry in header.split(","):
        name, _, rest = entry.strip().partition(";")
        for param in rest.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "dur":
                try:
                    timings[name] = float(value)
                except ValueError:
                    continue
    return timings


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
    """Calls the cloud's ``/v1/tail`` and ``/v1/info``."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64, keepalive_expiry=30),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def run_tail(self, payload: bytes, *, request_id: str, deadline_s: float) -> CloudReply:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(deadline_s):
                response = await self._client.post(
                    "/v1/tail",
                    content=payload,
                    headers={"Content-Type": MEDIA_TYPE, "Accept": MEDIA_TYPE, REQUEST_ID_HEADER: request_id},
                )
        except TimeoutError as exc:
            raise CloudTimeout(f"the cloud did not answer within the {deadline_s:.1f} s deadline") from exc
        except httpx.ConnectError as exc:
            raise CloudUnavailable(f"cannot connect to the cloud at {self.base_url}: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise CloudTimeout(f"the cloud at {self.base_url} timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise BadGateway(f"the connection to the cloud failed: {type(exc).__name__}: {exc}") from exc
        round_trip_ms = (loop.time() - started) * 1000
        self._raise_for_status(response)
        timing = _parse_server_timing(response.headers.get("server-timing", ""))
        return CloudReply(response.content, timing, round_trip_ms)

    @staticmethod
    def _raise_for_status(response: httpx.Response) -> None:
        if response.status_code == 200:
            return
        detail = _problem_detail(response)
        error: SplitInferError
        if response.status_code == 409:
            error = ModelMismatch(f"the cloud refused the payload: {detail}")
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
