"""TLS handshakes are bounded like the connections they open: a connection that never completes its
handshake is closed after the keep-alive timeout, and counts toward MAX_CONNECTIONS meanwhile (a real
uvicorn server on a loopback port with a self-signed certificate, configured as the services are:
splitinfer.serve.uvicorn_config)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import select
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from edge_service.settings import EdgeSettings
from service_core.connections import connection_ceiling
from splitinfer.http_protocol import service_protocol
from splitinfer.http_protocol.tls_handshake import with_tls_handshake
from splitinfer.serve import _DrainingServer, uvicorn_config
from tests.support.raw_http import exchange, served_in_thread
from tests.support.tls import self_signed_certificate

_KEEP_ALIVE_S = 2.0
_CAP = 1
_SILENT = 3 * connection_ceiling(_CAP)


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    answer = scope["scheme"].encode()
    headers = [(b"content-length", str(len(answer)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[tuple[Any, int]]:
    """A TLS server with MAX_CONNECTIONS 1 (its ceiling 9) and a 2 s keep-alive timeout: it and its port."""
    cert, key = certificate
    settings = EdgeSettings(
        port=0, keep_alive_s=_KEEP_ALIVE_S, max_connections=_CAP, ssl_certfile=cert, ssl_keyfile=key
    )
    with served_in_thread(_app, settings) as (server, port):
        yield server, port


def _closed(conn: socket.socket) -> bool:
    """Whether the server has closed ``conn`` (without waiting)."""
    readable, _, _ = select.select([conn], [], [], 0)
    if not readable:
        return False
    try:
        return conn.recv(4096) == b""
    except ConnectionError:
        return True


def _https_get(port: int, cert: Path) -> tuple[str, bytes]:
    context = ssl.create_default_context(cafile=str(cert))
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
    ):
        status, _, body = exchange(conn, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")  # type: ignore[arg-type]
    return status, body


def test_connections_that_never_start_a_handshake_are_bounded(
    tls_server: tuple[Any, int], certificate: tuple[Path, Path]
) -> None:
    """27 connections that never send a ClientHello: those beyond the ceiling are closed at once, the rest
    after the keep-alive timeout (asyncio's own handshake timeout is 60 s); then a client is served."""
    _, port = tls_server
    with contextlib.ExitStack() as stack:
        silent = [stack.enter_context(socket.create_connection(("127.0.0.1", port))) for _ in range(_SILENT)]
        time.sleep(_KEEP_ALIVE_S / 2)
        closed_at_once = sum(_closed(conn) for conn in silent)
        assert closed_at_once >= _SILENT - connection_ceiling(_CAP), f"{closed_at_once} closed before the timeout"
        deadline = time.monotonic() + 2 * _KEEP_ALIVE_S + 3
        while not all(_closed(conn) for conn in silent) and time.monotonic() < deadline:
            time.sleep(0.1)
        open_ones = sum(not _closed(conn) for conn in silent)
        assert open_ones == 0, f"{open_ones} silent connections still open after the handshake timeout"
    assert _https_get(port, certificate[0]) == ("HTTP/1.1 200 OK", b"https")


def test_a_tls_client_is_served(tls_server: tuple[Any, int], certificate: tuple[Path, Path]) -> None:
    _, port = tls_server
    for _ in range(3):
        assert _https_get(port, certificate[0]) == ("HTTP/1.1 200 OK", b"https")


class _Transport:
    """What the handshake protocol uses of a transport."""

    def __init__(self) -> None:
        self.closed = False

    def pause_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def test_bytes_read_before_the_handshake_close_the_connection_loudly(caplog: pytest.LogCaptureFixture) -> None:
    """uvloop starts reading a connection right after connection_made even if it was paused there, so the
    ClientHello can reach the protocol before its handshake starts (asyncio's loop waits: the services serve
    TLS on it). The handshake could then never complete: the connection is closed at once, uncounted, with
    an error saying why."""

    async def scenario() -> tuple[bool, int]:
        state = SimpleNamespace(connections=set())
        config = SimpleNamespace(timeout_keep_alive=30.0, limit_concurrency=None)
        protocol_class = with_tls_handshake(HttpToolsProtocol, ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
        protocol = protocol_class(config=config, server_state=state, app_state={}, _loop=asyncio.get_running_loop())  # type: ignore[call-arg]
        transport = _Transport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        protocol.data_received(b"\x16\x03\x01")  # NOTE: before the handshake task's first step
        await asyncio.sleep(0.1)
        return transport.closed, len(state.connections)

    assert asyncio.run(scenario()) == (True, 0)
    assert "ignores pause_reading() in connection_made" in caplog.text


def test_a_refused_head_over_tls_is_answered_whole(tls_server: tuple[Any, int], certificate: tuple[Path, Path]) -> None:
    """TLS cannot half-close: the connection lingers all the same, and a client still sending its head reads
    the whole 431."""
    _, port = tls_server
    context = ssl.create_default_context(cafile=str(certificate[0]))
    pad = b"X-Pad: " + b"p" * 1017 + b"\r\n"
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
    ):
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        for _ in range(200):
            conn.sendall(pad)
        status, headers, body = exchange(conn, b"")  # type: ignore[arg-type]
    assert status == "HTTP/1.1 431 Request Header Fields Too Large"
    assert headers["content-type"] == "application/problem+json" and json.loads(body)["status"] == 431


def test_the_startup_line_says_https(certificate: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    """The server is given no SSL context of its own (its protocol runs TLS); its startup line says https all
    the same, and it runs on asyncio's loop."""
    cert, key = certificate
    config = uvicorn_config(_app, EdgeSettings(port=0, ssl_certfile=cert, ssl_keyfile=key), lifespan="off")
    config.load()
    assert config.ssl is None and config.loop == "asyncio"
    with socket.socket() as listener, caplog.at_level(logging.INFO):
        listener.bind(("127.0.0.1", 0))
        _DrainingServer(config, 0, _app)._log_started_message([listener])
        port = listener.getsockname()[1]
    assert f"Uvicorn running on https://127.0.0.1:{port}" in caplog.text
    assert config.ssl is None


def test_a_tls_connection_that_never_answers_the_close_is_gone_within_the_keep_alive_timeout(
    tls_server: tuple[Any, int], certificate: tuple[Path, Path]
) -> None:
    """Closing a TLS connection sends close_notify and waits for the client's; asyncio waits 30 s by default
    (``ssl_shutdown_timeout``), and meanwhile the connection counts toward MAX_CONNECTIONS. Clients that
    completed a handshake and then neither sent a request nor read held their connections for 31 s after
    the 2 s head deadline closed them; the close is now bounded by the keep-alive timeout too."""
    server, port = tls_server
    context = ssl.create_default_context(cafile=str(certificate[0]))
    with contextlib.ExitStack() as stack:
        for _ in range(3):
            raw = stack.enter_context(socket.create_connection(("127.0.0.1", port)))
            stack.enter_context(context.wrap_socket(raw, server_hostname="127.0.0.1"))  # NOTE: then silent
        deadline = time.monotonic() + 4 * _KEEP_ALIVE_S + 2
        while server.server_state.connections and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not server.server_state.connections, "silent TLS connections still counted past their close"


def test_a_handshake_is_bounded_however_long_the_keep_alive(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cloud's keep-alive is 65 s: a silent connection waits for its handshake at most
    ``_TLS_HANDSHAKE_S`` (10 s; 1 s here), not the keep-alive timeout."""
    import splitinfer.http_protocol.tls_handshake

    monkeypatch.setattr(splitinfer.http_protocol.tls_handshake, "_TLS_HANDSHAKE_S", 1.0)
    cert, key = certificate
    settings = EdgeSettings(port=0, keep_alive_s=60, ssl_certfile=cert, ssl_keyfile=key)
    with served_in_thread(_app, settings) as (_, port), socket.create_connection(("127.0.0.1", port)) as silent:
        deadline = time.monotonic() + 10
        while not _closed(silent) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert time.monotonic() < deadline, "a silent connection outlived the handshake bound"


def test_plain_http_sent_to_the_tls_port_is_named_in_the_log(
    tls_server: tuple[Any, int], caplog: pytest.LogCaptureFixture
) -> None:
    """An edge whose CLOUD_URL still says http:// after the cloud turned TLS on: the cloud closed each
    connection and logged nothing, and the edge saw 'connection reset by peer'. The cloud's log now says
    what its clients are doing wrong."""
    _, port = tls_server
    with caplog.at_level(logging.WARNING), socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"POST /v1/tail HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        conn.settimeout(5)
        with contextlib.suppress(ConnectionError):
            assert conn.recv(4096) == b""  # closed, unanswered
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any("plain HTTP" in r.getMessage() for r in caplog.records):
        time.sleep(0.02)
    messages = [r.getMessage() for r in caplog.records]
    assert any("plain HTTP" in m and "https://" in m for m in messages), messages


def test_a_tls_client_that_stops_reading_is_dropped(certificate: tuple[Path, Path]) -> None:
    """The write deadline over TLS: three answers larger than the socket buffers pipelined to a client that never
    reads them. The TLS layer pauses writing, the deadline passes, the connection is aborted and every request
    ends (without the deadline the third waited to write for as long as the client kept the connection)."""
    size = 16 * 1024 * 1024
    ended: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(size).encode())]})
        await send({"type": "http.response.body", "body": b"x" * size})
        ended.append(scope["path"])

    cert, key = certificate
    settings = EdgeSettings(port=0, keep_alive_s=60.0, ssl_certfile=cert, ssl_keyfile=key)
    protocol = service_protocol(HttpToolsProtocol, write_deadline_s=1.0)
    context = ssl.create_default_context(cafile=str(cert))
    with served_in_thread(app, settings, http=protocol) as (server, port):
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", port))
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
            deadline = time.monotonic() + 20
            while (len(ended) < 3 or server.server_state.connections) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(ended) == 3
            assert not server.server_state.connections, "the connection is still open"
