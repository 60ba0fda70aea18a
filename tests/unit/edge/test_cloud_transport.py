"""The edge's aiohttp transport: httpx's interface and httpx's errors, over real loopback sockets."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import NamedTuple

import httpx
import pytest

from edge_service.cloud_transport import AiohttpTransport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class _Reply(NamedTuple):
    status: int
    headers: Mapping[str, str]
    body: bytes


async def _exchange(handler: Handler | None, *, direct: bool, read_timeout_s: float = 5.0) -> _Reply:
    """POST to a loopback server running ``handler`` (None: a port nobody listens on), through httpx's
    interface or (``direct``) the transport's own ``post``, the cloud client's hot path."""
    server = None
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        assert handler is not None
        await handler(reader, writer)

    if handler is None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    else:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1/tail"
    transport = AiohttpTransport()
    try:
        if direct:
            async with transport.post(url, b"payload", {}, connect_s=2.0, read_s=read_timeout_s) as reply:
                return _Reply(reply.status, reply.headers, b"".join([chunk async for chunk in reply.chunks]))
        timeout = httpx.Timeout(read_timeout_s, connect=2.0)
        async with (
            httpx.AsyncClient(transport=transport, timeout=timeout) as client,
            client.stream("POST", url, content=b"payload") as response,
        ):
            await response.aread()
            return _Reply(response.status_code, response.headers, response.content)
    finally:
        await transport.aclose()
        for writer in writers:
            writer.close()
        if server is not None:
            server.close()
            await server.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    return head + await reader.readexactly(length)


DIRECT = pytest.mark.parametrize("direct", [False, True], ids=["httpx", "direct"])


@DIRECT
def test_a_reply_comes_back_with_status_headers_and_body(direct: bool) -> None:
    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await _read_request(reader))
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\nContent-Length: 4\r\n\r\nbusy")
        await writer.drain()
        writer.close()

    response = asyncio.run(_exchange(answer, direct=direct))
    assert response.status == 503 and response.headers["retry-after"] == "2" and response.body == b"busy"
    request = seen[0].lower()
    assert request.count(b"content-length:") == 1 and request.count(b"host:") == 1 and request.endswith(b"payload")


@DIRECT
def test_nobody_listening_is_a_connect_error(direct: bool) -> None:
    with pytest.raises(httpx.ConnectError):
        asyncio.run(_exchange(None, direct=direct))


@DIRECT
def test_a_reply_cut_short_is_a_protocol_error(direct: bool) -> None:
    async def cut_short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly this")
        await writer.drain()
        writer.close()

    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        asyncio.run(_exchange(cut_short, direct=direct))


@DIRECT
def test_a_silent_server_is_a_read_timeout(direct: bool) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(5)

    with pytest.raises(httpx.ReadTimeout):
        asyncio.run(_exchange(silent, direct=direct, read_timeout_s=0.3))
