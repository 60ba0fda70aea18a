"""HTTP at the socket level for tests: one exchange on a raw connection, and a uvicorn server in a thread
configured as the services are (``splitinfer.serve.uvicorn_config``)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import uvicorn

from service_core.serving import ServingSettings
from splitinfer.serve import uvicorn_config

__all__ = ["exchange", "hold_served_connections", "read_until_closed", "served_in_thread"]


def exchange(conn: socket.socket, request: bytes, timeout_s: float = 10.0) -> tuple[str, dict[str, str], bytes]:
    """Send ``request``; the status line, headers and body of the answer (read by its Content-Length)."""
    conn.settimeout(timeout_s)
    conn.sendall(request)
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = conn.recv(65536)
        assert chunk, received
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines[1:])}
    length = 0 if request.startswith(b"HEAD ") else int(headers["content-length"])
    while len(body) < length:
        chunk = conn.recv(65536)
        assert chunk, body
        body += chunk
    return lines[0], headers, body


def hold_served_connections(
    stack: ExitStack, port: int, count: int, request: bytes, timeout_s: float = 10.0
) -> list[socket.socket]:
    """``count`` connections to ``port``, opened and served ``request`` one by one (each answered 200 and kept
    alive: the k-th is served while k are open), held until ``stack`` closes."""
    held = []
    for _ in range(count):
        conn = stack.enter_context(socket.create_connection(("127.0.0.1", port)))
        status, _, _ = exchange(conn, request, timeout_s)
        assert status == "HTTP/1.1 200 OK", status
        held.append(conn)
    return held


def read_until_closed(conn: socket.socket, timeout_s: float) -> bytes | None:
    """What the server sent before it closed the connection (a reset counts as closed), or None if it was
    still open after ``timeout_s`` without sending more."""
    conn.settimeout(timeout_s)
    received = b""
    try:
        while chunk := conn.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        return None
    return received


@contextmanager
def served_in_thread(
    app: Any, settings: ServingSettings, **uvicorn_options: Any
) -> Iterator[tuple[uvicorn.Server, int]]:
    """``app`` served by uvicorn on a free loopback port, in a thread: the server and its port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn_config(app, settings, lifespan="off", **uvicorn_options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield server, sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
