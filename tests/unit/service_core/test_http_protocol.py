"""Connections that never finish a request head are closed after the keep-alive timeout, requests uvicorn
cannot parse get problem+json, framing is bounded (431, 413), and a refusal written while the client is
still sending is followed by a lingering close, not a reset (a real uvicorn server on a loopback port,
configured as the services are: splitinfer.serve.uvicorn_config)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from edge_service.settings import EdgeSettings
from splitinfer.http_protocol import http_protocol, service_protocol
from splitinfer.http_protocol.framing import MAX_BODY_CHUNKS, MAX_HEAD_BYTES, with_framing_limits
from splitinfer.http_protocol.head_deadline import with_head_deadline
from splitinfer.http_protocol.lingering import with_lingering_close
from tests.support.raw_http import exchange, read_until_closed, served_in_thread

_KEEP_ALIVE_S = 0.5
_GRACE_S = 5.0


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        await asyncio.sleep(3 * _KEEP_ALIVE_S)
    answer = b"ok"  # NOTE: without reading the body, except at /count
    if scope["path"] == "/count":  # NOTE: how many body bytes arrived
        received, more = 0, True
        while more:
            message = await receive()
            received, more = received + len(message.get("body", b"")), message.get("more_body", False)
        answer = str(received).encode()
    headers = [(b"content-length", str(len(answer)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture(params=["auto", "h11"])
def port(request: pytest.FixtureRequest) -> Iterator[int]:
    """A server as the services run (uvicorn's automatic choice: httptools here), and one on h11 (what runs
    where httptools is not installed)."""
    settings = EdgeSettings(port=0, keep_alive_s=_KEEP_ALIVE_S)
    options = {} if request.param == "auto" else {"http": with_head_deadline(H11Protocol)}
    with served_in_thread(_app, settings, **options) as (_, port):
        yield port


def _closed_within(conn: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before it closed the connection, or None if it was still open after ``seconds``."""
    return read_until_closed(conn, seconds)


@pytest.mark.parametrize("sent", [b"", b"GET / HTTP/1.1\r\nHost: x\r\n"], ids=["nothing", "half a head"])
def test_a_connection_without_a_complete_request_head_is_closed(port: int, sent: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(sent)
        assert _closed_within(conn, _GRACE_S) == b""


def test_a_kept_alive_connection_trickling_its_next_head_is_closed(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        conn.settimeout(_GRACE_S)
        assert conn.recv(4096).endswith(b"ok")
        started = time.monotonic()
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\n":  # NOTE: each byte would cancel uvicorn's own timer
            if time.monotonic() - started > _GRACE_S:
                break
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.1)
        assert _closed_within(conn, _GRACE_S) == b""
        assert time.monotonic() - started < 2 * _GRACE_S


def test_a_request_in_progress_outlives_the_deadline(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = _closed_within(conn, _GRACE_S)
        assert reply is not None and reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"ok")


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\nRequest ID: 1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"\x00\x01 / HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["space in a header name", "negative length", "garbage method"],
)
def test_a_request_the_parser_refuses_gets_problem_json(port: int, head: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(head)
        reply = _closed_within(conn, _GRACE_S)
    assert reply is not None
    status, _, body = reply.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 400") and b"content-type: application/problem+json" in status.lower()
    assert json.loads(body) | {"detail": ""} == {
        "type": "https://split-inference.dev/problems/bad-request",
        "title": "Bad request",
        "status": 400,
        "detail": "",
    }


def test_a_websocket_upgrade_is_served_as_plain_http(port: int) -> None:
    """No route is a WebSocket: the request is answered as the GET it is, not handed to a WebSocket library."""
    upgrade = (
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port)) as conn:
        status, _, body = exchange(conn, upgrade)
    assert status.startswith("HTTP/1.1 200"), status
    assert body == b"ok"


_PAD = b"X-Pad: " + b"p" * 1017 + b"\r\n"  # NOTE: 1 KiB a header line


def _padded_head(kib: int, path: bytes = b"/", extra: bytes = b"") -> bytes:
    """A request head of about ``kib`` KiB (header lines of padding)."""
    return b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n" + extra + _PAD * kib + b"\r\n"


def test_a_request_head_over_the_limit_is_refused_unread(port: int, request: pytest.FixtureRequest) -> None:
    """Header lines sent as fast as loopback carries them: refused once the head passes the limit (431 from
    httptools' bound, 400 from h11's), the connection closed, the rest never read (it used to be kept in
    memory: a gigabyte in seconds)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        deadline = time.monotonic() + _GRACE_S
        try:
            while sent < 256 * 1024 * 1024 and time.monotonic() < deadline:
                conn.sendall(_PAD * 64)
                sent += len(_PAD) * 64
        except OSError:  # NOTE: the server closed the connection
            pass
        reply = _closed_within(conn, _GRACE_S)
    assert sent < 32 * 1024 * 1024, f"the server read {sent} bytes of one request head"
    assert reply is not None
    status, _, body = reply.partition(b"\r\n\r\n")
    assert b"content-type: application/problem+json" in status.lower()
    if request.node.callspec.params["port"] == "auto":
        assert status.startswith(b"HTTP/1.1 431"), status
        assert json.loads(body)["type"] == "https://split-inference.dev/problems/request-header-fields-too-large"
    else:
        assert status.startswith(b"HTTP/1.1 400"), status


def test_a_head_under_the_limit_sent_with_its_body_and_the_next_request_is_served(port: int) -> None:
    """One write carrying a 60 KiB head, a 300 KB body and a second such request: both served, every body
    byte delivered (past the limit the parser is fed the head, then the rest)."""
    body = b"b" * 300_000
    length = b"Content-Length: %d\r\n" % len(body)
    first = _padded_head(60, b"/count", length) + body
    last = _padded_head(60, b"/count", length + b"Connection: close\r\n") + body
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(first + last)
        reply = _closed_within(conn, _GRACE_S)
    assert reply is not None
    assert reply.count(b"HTTP/1.1 200") == 2, reply
    assert reply.count(b"\r\n\r\n300000") == 2, reply


@pytest.fixture
def httptools_port() -> Iterator[int]:
    """A server as the services run it (httptools: the chunk bound is httptools' alone)."""
    with served_in_thread(_app, EdgeSettings(port=0, keep_alive_s=_KEEP_ALIVE_S)) as (_, port):
        yield port


def _chunked(path: bytes, chunks: int, size: int) -> bytes:
    head = b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    return head + (b"%x\r\n" % size + b"c" * size + b"\r\n") * chunks + b"0\r\n\r\n"


def test_a_body_in_too_many_chunks_is_refused(httptools_port: int) -> None:
    """A body sent a byte a chunk: 413 once it passes MAX_BODY_CHUNKS chunks, and the connection closes."""
    with socket.create_connection(("127.0.0.1", httptools_port)) as conn:
        with contextlib.suppress(OSError):  # NOTE: the server closed the connection
            conn.sendall(_chunked(b"/count", MAX_BODY_CHUNKS + 1000, 1))
        reply = _closed_within(conn, _GRACE_S)
    assert reply is not None
    status, _, body = reply.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 413"), reply
    assert b"content-type: application/problem+json" in status.lower()
    assert json.loads(body)["type"] == "https://split-inference.dev/problems/payload-too-large"


def test_a_body_in_fewer_larger_chunks_is_served_whole(httptools_port: int) -> None:
    with socket.create_connection(("127.0.0.1", httptools_port)) as conn:
        conn.sendall(_chunked(b"/count", 2000, 1024))
        reply = _closed_within(conn, _GRACE_S)
    assert reply is not None and reply.startswith(b"HTTP/1.1 200"), reply
    assert reply.endswith(b"\r\n\r\n%d" % (2000 * 1024))


def test_a_request_answered_before_its_body_gets_no_second_answer(httptools_port: int) -> None:
    """The app answered without reading the body; the chunks that keep coming close the connection, with no
    413 after the answer."""
    with socket.create_connection(("127.0.0.1", httptools_port)) as conn:
        with contextlib.suppress(OSError):
            conn.sendall(_chunked(b"/", MAX_BODY_CHUNKS + 1000, 1))
        reply = _closed_within(conn, _GRACE_S)
    assert reply is not None
    assert reply.count(b"HTTP/1.1 ") == 1 and reply.startswith(b"HTTP/1.1 200"), reply


def _replies(reply: bytes) -> list[bytes]:
    """The status lines in what a connection received, in order."""
    return re.findall(rb"HTTP/1\.1 \d{3} [^\r]*", reply)


def test_a_refused_head_waits_for_the_answer_owed_before_it(httptools_port: int) -> None:
    """A pipelined request with an oversized head behind a slow one: the slow one gets its own answer first,
    then the 431 (it was written at once, as the slow request's answer)."""
    with socket.create_connection(("127.0.0.1", httptools_port)) as conn:
        conn.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n" + _padded_head(200))
        reply = _closed_within(conn, _GRACE_S)
    assert reply is not None
    assert _replies(reply) == [b"HTTP/1.1 200 OK", b"HTTP/1.1 431 Request Header Fields Too Large"], reply
    assert b"\r\n\r\nok" in reply


@pytest.mark.parametrize(
    "garbled",
    [b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", b"\x00\x01 / HTTP/1.1\r\nHost: x\r\n\r\n"],
    ids=["malformed length", "garbage method"],
)
def test_a_garbled_request_waits_for_the_answer_owed_before_it(port: int, garbled: bytes) -> None:
    """A pipelined request the parser refuses behind a slow one: the slow one gets its own answer, then the
    400. Before, the 400 was written at once, as the slow request's answer, and the slow one's was dropped."""
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n" + garbled)
        reply = _closed_within(conn, _GRACE_S)
    assert reply is not None
    assert _replies(reply) == [b"HTTP/1.1 200 OK", b"HTTP/1.1 400 Bad Request"], reply
    assert b"\r\n\r\nok" in reply


@pytest.fixture
def two_chunks_port() -> Iterator[int]:
    """A server whose bodies may come in at most 2 chunks (and the closing one)."""
    protocol = with_head_deadline(with_framing_limits(HttpToolsProtocol, chunk_limit=2))
    with served_in_thread(_app, EdgeSettings(port=0, keep_alive_s=_KEEP_ALIVE_S), http=protocol) as (_, port):
        yield port


@pytest.mark.parametrize(("chunks", "status"), [(2, b"200"), (3, b"413")])
def test_the_chunk_bound_counts_the_chunks_that_carry_data(two_chunks_port: int, chunks: int, status: bytes) -> None:
    with socket.create_connection(("127.0.0.1", two_chunks_port)) as conn:
        conn.sendall(_chunked(b"/count", chunks, 10))
        reply = _closed_within(conn, _GRACE_S)
    assert reply is not None and reply.startswith(b"HTTP/1.1 " + status), reply


def test_a_refused_body_waits_for_the_answer_owed_before_it(two_chunks_port: int) -> None:
    with socket.create_connection(("127.0.0.1", two_chunks_port)) as conn:
        conn.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n" + _chunked(b"/count", 5, 10))
        reply = _closed_within(conn, _GRACE_S)
    assert reply is not None
    assert _replies(reply) == [b"HTTP/1.1 200 OK", b"HTTP/1.1 413 Content Too Large"], reply


def test_an_oversized_head_right_after_a_body_is_refused(httptools_port: int) -> None:
    """A head that starts in the same read as the previous request's body is counted too (within twice the
    limit)."""
    body = b"b" * 50_000
    first = _padded_head(1, b"/count", b"Content-Length: %d\r\n" % len(body)) + body
    with socket.create_connection(("127.0.0.1", httptools_port)) as conn:
        with contextlib.suppress(OSError):
            conn.sendall(first + _padded_head(150))
        reply = _closed_within(conn, _GRACE_S)
    assert reply is not None
    assert _replies(reply) == [b"HTTP/1.1 200 OK", b"HTTP/1.1 431 Request Header Fields Too Large"], reply


def test_after_an_upgrade_request_the_connection_closes(httptools_port: int) -> None:
    """httptools parses nothing after an upgrade: a request pipelined behind one is not answered as if it
    were the next one; the connection closes after the upgrade request's answer."""
    upgrade = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    with socket.create_connection(("127.0.0.1", httptools_port)) as conn:
        conn.sendall(upgrade + b"GET /count HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = _closed_within(conn, _GRACE_S)
    assert reply is not None
    assert _replies(reply) == [b"HTTP/1.1 200 OK"], reply
    assert b"\r\nconnection: close\r\n" in reply.lower() and reply.endswith(b"ok")


def test_the_services_parse_http_with_httptools() -> None:
    """The framing bounds are httptools' (a dependency of the project): the protocol the services run is
    built on it, not on h11."""
    assert issubclass(http_protocol(), HttpToolsProtocol)


def _sent_then_read(port: int, head: bytes, rest: bytes, piece: int = 4096) -> bytes:
    """Send ``head`` then ``rest`` (in ``piece``-byte writes, as a client still sending would), half-close,
    then read to the end: what came back. A reset (the send or the read failing) fails the test: the server
    closed with bytes of ours unread, and a client may lose the answer (Windows drops received data on a
    reset; a client failing to send may never read)."""
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.settimeout(_GRACE_S)
        try:
            conn.sendall(head)
            for start in range(0, len(rest), piece):
                conn.sendall(rest[start : start + piece])
            conn.shutdown(socket.SHUT_WR)
            received = b""
            while chunk := conn.recv(65536):
                received += chunk
        except OSError as exc:
            pytest.fail(f"the server reset the connection: {exc!r}")
    return received


_ROUNDS = 20


def test_a_refused_head_is_answered_without_a_reset(port: int, request: pytest.FixtureRequest) -> None:
    """A client still sending header lines when its head is refused reads the whole refusal, and the server
    closes cleanly (it half-closes and reads what is still coming, instead of closing with it unread, which
    resets the connection): 20 rounds, so that a race shows."""
    expected = b"HTTP/1.1 431" if request.node.callspec.params["port"] == "auto" else b"HTTP/1.1 400"
    for _ in range(_ROUNDS):
        reply = _sent_then_read(port, b"GET / HTTP/1.1\r\nHost: x\r\n", _PAD * 256)
        status, _, body = reply.partition(b"\r\n\r\n")
        assert status.startswith(expected), reply
        assert b"content-type: application/problem+json" in status.lower()
        length = int(re.search(rb"content-length: (\d+)", status.lower()).group(1))  # type: ignore[union-attr]
        assert len(body) == length and json.loads(body)["status"] == int(expected[-3:])


def test_a_body_in_too_many_chunks_is_answered_without_a_reset(httptools_port: int) -> None:
    chunks = _chunked(b"/count", MAX_BODY_CHUNKS + 5000, 1)
    head, _, rest = chunks.partition(b"\r\n\r\n")
    for _ in range(_ROUNDS):
        reply = _sent_then_read(httptools_port, head + b"\r\n\r\n", rest)
        status, _, body = reply.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 413"), reply
        assert json.loads(body)["type"] == "https://split-inference.dev/problems/payload-too-large"


def test_a_garbled_request_is_answered_without_a_reset(port: int) -> None:
    """The parser's 400 too: the client still sending what follows a malformed head reads it whole."""
    for _ in range(_ROUNDS):
        reply = _sent_then_read(port, b"GET / HTTP/1.1\r\nHost: x\r\nRequest ID: 1\r\n\r\n", b"z" * 256 * 1024)
        assert reply.startswith(b"HTTP/1.1 400") and reply.count(b"HTTP/1.1 ") == 1, reply  # NOTE: no 431 after it
        assert json.loads(reply.partition(b"\r\n\r\n")[2])["status"] == 400


@contextlib.contextmanager
def _lingering_server(seconds: float, max_bytes: int) -> Iterator[tuple[Any, int]]:
    """A server as the services run, whose connections linger ``seconds`` or ``max_bytes`` after a refusal."""
    lingering = with_lingering_close(HttpToolsProtocol, seconds=seconds, max_bytes=max_bytes)
    protocol = with_head_deadline(with_framing_limits(lingering))
    settings = EdgeSettings(port=0, keep_alive_s=60.0)  # NOTE: no other timer closes the connection
    with served_in_thread(_app, settings, http=protocol) as (server, port):
        yield server, port


def _refused(conn: socket.socket) -> None:
    """Send a head over the limit, and read the 431 (the connection then lingers)."""
    conn.settimeout(_GRACE_S)
    conn.sendall(_padded_head(MAX_HEAD_BYTES // 1024 + 8))
    received = b""
    while b"}" not in received:  # NOTE: the problem+json body's end
        chunk = conn.recv(65536)
        assert chunk, received
        received += chunk
    assert received.startswith(b"HTTP/1.1 431"), received


def _open_connections(server: Any, seconds: float) -> int:
    """How many connections the server holds once they are all closed, or after ``seconds``."""
    deadline = time.monotonic() + seconds
    while server.server_state.connections and time.monotonic() < deadline:
        time.sleep(0.05)
    return len(server.server_state.connections)


def test_a_lingering_connection_closes_after_its_time() -> None:
    """A client that neither closes nor sends after its refusal: closed once the linger time is over (the
    server's FIN first, at once, after the answer), its descriptor released."""
    with (
        _lingering_server(seconds=1.5, max_bytes=1 << 30) as (server, port),
        socket.create_connection(("127.0.0.1", port)) as conn,
    ):
        _refused(conn)
        assert conn.recv(65536) == b""  # NOTE: the write side is shut right after the answer
        assert len(server.server_state.connections) == 1, "closed before its linger time"
        assert _open_connections(server, _GRACE_S) == 0


def test_a_lingering_connection_closes_after_its_bytes() -> None:
    """A client that keeps sending after its refusal: closed (reset) once the byte bound is read, long before
    the linger time."""
    sent = 0
    with _lingering_server(seconds=60.0, max_bytes=256 * 1024) as (server, port):
        with socket.create_connection(("127.0.0.1", port)) as conn:
            _refused(conn)
            with contextlib.suppress(OSError):  # NOTE: the reset
                while sent < 256 * 1024 * 1024:
                    conn.sendall(_PAD * 64)
                    sent += len(_PAD) * 64
        assert sent < 32 * 1024 * 1024, f"the server read {sent} bytes after its refusal"
        assert _open_connections(server, _GRACE_S) == 0


@pytest.mark.parametrize("parser", ["auto", "h11"])
def test_a_request_refused_by_the_connection_limit_is_answered_without_a_reset(parser: str) -> None:
    """MAX_CONNECTIONS 1, one connection held: a client uploading a body on a second connection gets the whole
    503 (sent before its body is read) and no reset."""
    settings = EdgeSettings(port=0, keep_alive_s=60.0, max_connections=1)
    options = {} if parser == "auto" else {"http": service_protocol(H11Protocol)}
    head = b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 262144\r\n\r\n"
    with (
        served_in_thread(_app, settings, **options) as (_, port),
        socket.create_connection(("127.0.0.1", port)) as held,
    ):
        status, _, _ = exchange(held, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == "HTTP/1.1 200 OK"
        for _ in range(_ROUNDS):
            reply = _sent_then_read(port, head, b"u" * 262144)
            status_line, _, body = reply.partition(b"\r\n\r\n")
            assert status_line.startswith(b"HTTP/1.1 503"), reply
            assert json.loads(body)["status"] == 503


@pytest.mark.parametrize("parser", ["auto", "h11"])
def test_a_pipelined_request_in_progress_sees_its_client_disconnect(parser: str) -> None:
    """A client that pipelines requests and resets the connection while the first is being served: that first
    request (not only the newest, which is queued behind it) sees ``http.disconnect``, and its answer is
    dropped rather than written to the closed transport (uvicorn marked only the newest request disconnected:
    the first waited for a disconnect for ever, and answering it raised a RuntimeError on uvloop, a 500
    and two tracebacks in the log per such client)."""
    seen: list[str] = []
    started = threading.Event()
    done = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/first":
            await receive()  # NOTE: the (empty) body
            started.set()
            try:
                seen.append((await asyncio.wait_for(receive(), 3.0))["type"])
            except TimeoutError:
                seen.append("no disconnect")
            try:
                await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
                await send({"type": "http.response.body", "body": b"ok"})
                seen.append("answer dropped")
            except Exception as exc:  # NOTE: what the server raised at the app
                seen.append(f"send raised {type(exc).__name__}")
            done.set()
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    settings = EdgeSettings(port=0, keep_alive_s=60.0)
    options = {} if parser == "auto" else {"http": service_protocol(H11Protocol)}
    with served_in_thread(app, settings, **options) as (_, port):
        conn = socket.create_connection(("127.0.0.1", port))
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # NOTE: close = reset
        conn.sendall(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n" + b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
        assert started.wait(_GRACE_S)
        time.sleep(0.2)  # NOTE: the pipelined heads are parsed by now
        conn.close()
        assert done.wait(_GRACE_S)
    assert seen == ["http.disconnect", "answer dropped"]


_BIG = 16 * 1024 * 1024  # NOTE: more than loopback's socket buffers hold


@pytest.mark.parametrize("parser", ["auto", "h11"])
@pytest.mark.parametrize("pipelined", [1, 2], ids=["one request", "two pipelined"])
def test_a_client_that_stops_reading_its_answers_is_dropped(parser: str, pipelined: int) -> None:
    """A client that asks for a large answer and never reads it: its connection is aborted once writing has
    made no progress for the write deadline, and a request of it that waits to write its answer ends (before:
    the connection, the answer's bytes and a request pipelined behind it, with its admission slot and body
    bytes, were held for as long as the client kept the connection open)."""
    ended: list[str] = []
    answering = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        answering.set()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(_BIG).encode())]})
        await send({"type": "http.response.body", "body": b"x" * _BIG})
        ended.append(scope["path"])

    settings = EdgeSettings(port=0, keep_alive_s=60.0)  # NOTE: no other timer closes the connection
    base = HttpToolsProtocol if parser == "auto" else H11Protocol
    protocol = service_protocol(base, write_deadline_s=1.0)
    with served_in_thread(app, settings, http=protocol) as (server, port):
        conn = socket.socket()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        conn.connect(("127.0.0.1", port))
        with conn:
            conn.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n" * pipelined)
            assert answering.wait(_GRACE_S)
            assert _open_connections(server, 4 * _GRACE_S) == 0, "the connection is still open"
        deadline = time.monotonic() + _GRACE_S
        while len(ended) < pipelined and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(ended) == pipelined


def test_a_client_reading_slowly_gets_its_whole_answer() -> None:
    """The write deadline bounds a stall, not an answer's time: a client that reads a little at a time, each
    read well within the deadline, gets all of an answer that takes several deadlines to send."""
    size = 4 * 1024 * 1024  # NOTE: more than the socket buffers take: most of it waits in the transport

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(size).encode())]})
        await send({"type": "http.response.body", "body": b"x" * size})

    settings = EdgeSettings(port=0, keep_alive_s=60.0)
    with served_in_thread(app, settings, http=service_protocol(HttpToolsProtocol, write_deadline_s=0.5)) as (_, port):
        conn = socket.socket()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        conn.connect(("127.0.0.1", port))
        with conn:
            conn.settimeout(_GRACE_S)
            conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            received = 0
            while received < size:
                time.sleep(0.1)  # NOTE: a fifth of the deadline between reads of 256 KiB: 16 of them, 3 deadlines
                chunk = b""
                while len(chunk) < 256 * 1024 and received + len(chunk) < size:
                    piece = conn.recv(256 * 1024)
                    assert piece, f"closed after {received + len(chunk)} bytes"
                    chunk += piece
                received += len(chunk)
    assert received >= size
