"""A kept-alive connection that the cloud closes as a request goes out: the edge sends the request once
more on a new connection, instead of failing the client's request (over real loopback sockets)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from cloud_service.settings import CloudSettings
from edge_service.cloud_client import POOL_KEEPALIVE_S, CloudClient
from edge_service.settings import EdgeSettings
from shared.errors import CloudUnavailable
from splitinfer.serve import uvicorn_config

_OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 5\r\n\r\nlogit"


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    return head + await reader.readexactly(length)


async def _calls(
    replies: list[list[bytes | float | None]], calls: int, *, direct: bool
) -> tuple[list[object], int, int]:
    """``calls`` tail calls against a server whose n-th connection answers its requests with ``replies[n]``
    in turn, then closes it (None: close it once the request is read, without a reply; a number: that many
    seconds later). The outcomes (the reply's body and round trip, or the error), the connections made and
    the requests read."""
    connections = requests = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections, requests
        script = replies[min(connections, len(replies) - 1)]
        connections += 1
        try:
            for reply in script:
                await _read_request(reader)
                requests += 1
                if isinstance(reply, float):
                    await asyncio.sleep(reply)
                    break
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport = None if direct else httpx.AsyncHTTPTransport()
    client = CloudClient(
        f"http://127.0.0.1:{port}", connect_timeout_s=2, read_timeout_s=5, connect_retries=0, transport=transport
    )
    outcomes: list[object] = []
    try:
        for _ in range(calls):
            try:
                reply = await client.run_tail(b"payload", request_id="r", deadline_s=5, max_reply_bytes=1000)
                outcomes.append((reply.body, reply.round_trip_ms))
            except CloudUnavailable as exc:
                outcomes.append(exc)
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
    return outcomes, connections, requests


DIRECT = pytest.mark.parametrize("direct", [False, True], ids=["httpx", "direct"])


@DIRECT
def test_a_kept_alive_connection_closed_under_a_request_is_sent_again(direct: bool) -> None:
    # The first connection answers one request, then closes under the second, as a server does when its
    # keep-alive timeout ends just as the edge reuses the connection.
    outcomes, connections, requests = asyncio.run(_calls([[_OK, None], [_OK]], 2, direct=direct))
    assert [body for body, _ in outcomes] == [b"logit", b"logit"]  # type: ignore[misc]
    assert (connections, requests) == (2, 3)


@DIRECT
def test_only_the_attempt_that_was_answered_is_timed(direct: bool) -> None:
    # The dropped attempt took 0.3 s; the round trip the link estimate learns from is the answered one's.
    outcomes, _, _ = asyncio.run(_calls([[_OK, 0.3], [_OK]], 2, direct=direct))
    (_, first_ms), (body, resent_ms) = outcomes  # type: ignore[misc]
    assert body == b"logit" and resent_ms < 150 and first_ms < 150


@DIRECT
def test_a_cloud_that_drops_every_request_is_sent_it_only_twice(direct: bool) -> None:
    outcomes, connections, requests = asyncio.run(_calls([[None]], 1, direct=direct))
    assert isinstance(outcomes[0], CloudUnavailable) and "dropped the connection" in outcomes[0].detail
    assert (connections, requests) == (2, 2)


@DIRECT
def test_a_reply_cut_short_is_not_sent_again(direct: bool) -> None:
    # The cloud answered (it ran the tail): a reply that breaks off is the cloud's failure, not a stale
    # connection's.
    short = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart"
    outcomes, connections, requests = asyncio.run(_calls([[short]], 1, direct=direct))
    assert isinstance(outcomes[0], CloudUnavailable)
    assert (connections, requests) == (1, 1)


def test_the_cloud_keeps_idle_connections_open_longer_than_the_edge_s_pool() -> None:
    # Then the edge closes an idle connection to the cloud before the cloud does, and the resend above is
    # left for proxies in between with shorter timeouts. The edge's own listener keeps uvicorn's 5 s.
    assert uvicorn_config(object(), CloudSettings()).timeout_keep_alive > POOL_KEEPALIVE_S
    assert uvicorn_config(object(), EdgeSettings()).timeout_keep_alive == 5
