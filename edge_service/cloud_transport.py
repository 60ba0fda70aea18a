"""The edge's HTTP transport to the cloud: httpx's interface over aiohttp's connection pool.

The edge talks to the cloud once per request, so the client's own cost is on every request's path.
httpx's default transport (httpcore over anyio and h11) spent 1.4-1.9 ms of CPU per small ``/v1/tail``
exchange on loopback here, aiohttp's client 0.3-0.4 ms (measured side by side, docs/benchmarks.md
"Per-request overhead"). The cloud client keeps httpx's interface (timeouts, streaming, typed errors,
and ``httpx.MockTransport`` in tests) and sends through this transport, which maps aiohttp's errors to
httpx's so the client's handling of them is unchanged.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import httpx

__all__ = ["AiohttpTransport", "DirectReply"]

# NOTE: aiohttp writes these itself (from the URL and the body); passing httpx's too would duplicate them.
_OWN_HEADERS = frozenset({b"host", b"content-length", b"transfer-encoding"})
_SKIPPED = ("User-Agent", "Accept-Encoding", "Accept", "Content-Type")
"""Headers aiohttp would add on its own: the caller's, or none."""


def _httpx_error(exc: Exception, request: httpx.Request) -> httpx.HTTPError:
    """aiohttp's (or asyncio's) failure as the httpx error the cloud client handles."""
    message = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message, request=request)
    if isinstance(exc, aiohttp.SocketTimeoutError | TimeoutError):
        return httpx.ReadTimeout(message, request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message, request=request)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        return httpx.RemoteProtocolError(message, request=request)
    if isinstance(exc, aiohttp.ClientOSError | OSError):
        return httpx.ReadError(message, request=request)
    return httpx.TransportError(message, request=request)


@dataclass(frozen=True)
class DirectReply:
    """A reply of :meth:`AiohttpTransport.post`: its body still to be read from ``chunks``."""

    status: int
    headers: Mapping[str, str]
    """Case-insensitive, as received."""
    chunks: AsyncIterator[bytes]
    """The body as sent; aiohttp's failures raised as httpx's errors."""


async def _chunks(response: aiohttp.ClientResponse, request: httpx.Request | None, url: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.content.iter_any():
            yield chunk
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise _httpx_error(exc, request or httpx.Request("POST", url)) from exc


class _ReplyStream(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in _chunks(self._response, self._request, str(self._request.url)):
            yield chunk

    async def aclose(self) -> None:
        # NOTE: a reply read to its end goes back to the pool; one abandoned half-way closes its connection.
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Sends httpx requests through one aiohttp session (pooled keep-alive connections, TLS with
    ``ssl_context``), created on first use inside the running event loop."""

    def __init__(
        self, *, ssl_context: ssl.SSLContext | None = None, max_connections: int = 256, keepalive_s: float = 30
    ) -> None:
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._max_connections = max_connections
        self._keepalive_s = keepalive_s
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, keepalive_timeout=self._keepalive_s, ssl=self._ssl
            )
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False, trust_env=False)
        return self._session

    @asynccontextmanager
    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], *, connect_s: float | None, read_s: float | None
    ) -> AsyncIterator[DirectReply]:
        """POST ``body`` through the same pool without building httpx's request and response (about 0.6 ms
        of CPU per exchange here): the cloud client's hot path. Failures raise the same httpx errors."""
        timeout = aiohttp.ClientTimeout(sock_connect=connect_s, sock_read=read_s)
        try:
            response = await self._open().request(
                "POST",
                url,
                data=body,
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
                skip_auto_headers=_SKIPPED,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _httpx_error(exc, httpx.Request("POST", url)) from exc
        try:
            yield DirectReply(response.status, response.headers, _chunks(response, None, url))
        finally:
            response.release()  # NOTE: as _ReplyStream.aclose: back to the pool only if read to its end

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(sock_connect=timeouts.get("connect"), sock_read=timeouts.get("read"))
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in request.headers.raw
            if name.lower() not in _OWN_HEADERS
        ]
        body = await request.aread()
        try:
            response = await self._open().request(
                request.method,
                str(request.url),
                data=body or None,
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
                skip_auto_headers=_SKIPPED,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _httpx_error(exc, request) from exc
        return httpx.Response(
            response.status,
            headers=list(response.raw_headers),
            stream=_ReplyStream(response, request),
            extensions={"http_version": b"HTTP/1.1"},
            request=request,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
