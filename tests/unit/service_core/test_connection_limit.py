"""MAX_CONNECTIONS: a request beyond it gets a problem+json 503 with Retry-After and its connection is closed;
a connection beyond the ceiling is closed unanswered; once connections close, requests are served again (a
real uvicorn server on a loopback port, configured as the services are: splitinfer.serve.uvicorn_config);
the setting fits the process's file descriptor limit."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from edge_lite.settings import EdgeLiteSettings
from edge_service.settings import EdgeSettings
from service_core import connections, serving
from splitinfer.http_protocol import service_protocol
from tests.support.raw_http import read_until_closed, served_in_thread

CAP = 8
CEILING = 16  # connections.connection_ceiling(8): 8 more, answered 503
_TIMEOUT_S = 5.0


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(params=["auto", "h11"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[int, Callable[[], int], list[str]]]:
    """The port of a server with MAX_CONNECTIONS 8, how many connections it holds, and its refusals as counted."""
    refusals: list[str] = []
    settings = EdgeSettings(port=0, keep_alive_s=60, max_connections=CAP)
    options = {} if request.param == "auto" else {"http": service_protocol(H11Protocol, refusals.append)}
    with served_in_thread(_app, settings, on_refused=refusals.append, **options) as (server, port):
        yield port, lambda: len(server.server_state.connections), refusals


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + _TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _until_closed(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (fails after a few seconds)."""
    received = read_until_closed(conn, _TIMEOUT_S)
    assert received is not None, "the server kept the connection open"
    return received


def _get(conn: socket.socket) -> bytes:
    conn.settimeout(_TIMEOUT_S)
    conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    received = b""
    while not received.endswith(b"\r\n\r\nok"):
        chunk = conn.recv(65536)
        assert chunk, received
        received += chunk
    return received


def test_requests_beyond_max_connections_get_503_problems_until_connections_close(
    server: tuple[int, Callable[[], int], list[str]],
) -> None:
    port, open_connections, refusals = server
    with ExitStack() as stack:
        held = [stack.enter_context(socket.create_connection(("127.0.0.1", port))) for _ in range(CAP)]
        for conn in held:  # NOTE: served one by one: the k-th is served while k connections are open
            assert _get(conn).startswith(b"HTTP/1.1 200 ")
        assert open_connections() == CAP

        with socket.create_connection(("127.0.0.1", port)) as extra:
            extra.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = _until_closed(extra)  # NOTE: the server closes the connection after the 503
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines[1:])}
        assert lines[0] == "HTTP/1.1 503 Service Unavailable"
        assert headers["content-type"] == "application/problem+json"
        assert headers["retry-after"] == "1"
        assert headers["connection"] == "close"
        problem = json.loads(body)
        assert problem["status"] == 503 and problem["type"].endswith("/service-unavailable")
        assert problem["detail"] == f"the server is serving {CAP} connections, its limit; retry shortly"

        # the held connections are still served (they are within the limit)
        assert _get(held[0]).startswith(b"HTTP/1.1 200 ")

        # beyond the ceiling a new connection is closed unanswered
        idle = [stack.enter_context(socket.create_connection(("127.0.0.1", port))) for _ in range(CEILING - CAP)]
        _wait_for(lambda: open_connections() == CEILING)
        with socket.create_connection(("127.0.0.1", port)) as dropped:
            assert _until_closed(dropped) == b""
        assert open_connections() == CEILING
        for conn in idle:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _until_closed(conn).startswith(b"HTTP/1.1 503 ")

    _wait_for(lambda: open_connections() == 0)
    with socket.create_connection(("127.0.0.1", port)) as again:
        assert _get(again).startswith(b"HTTP/1.1 200 ")
    # NOTE: what the service's splitinfer_connections_refused counts
    assert sorted(refusals) == ["answered"] * (1 + CEILING - CAP) + ["closed"]


def test_the_default_fits_the_file_descriptor_limit() -> None:
    assert connections.default_max_connections(None) == 1024
    assert connections.default_max_connections(2000) == 1024
    for open_files in (1024, 400, 330):
        best = connections.default_max_connections(open_files)
        assert connections.connection_ceiling(best) + connections.RESERVED_FDS <= open_files
        assert connections.connection_ceiling(best + 1) + connections.RESERVED_FDS > open_files
        connections.check_max_connections(best, open_files)


def test_a_max_connections_over_the_file_descriptor_limit_is_refused_at_startup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(serving, "open_files_limit", lambda: 1024)
    assert EdgeSettings().max_connections == connections.default_max_connections(1024) < 1024
    with pytest.raises(ValueError, match=r"MAX_CONNECTIONS 1024 needs up to 1472 file descriptors .*ulimit -n"):
        EdgeSettings(max_connections=1024)
    assert EdgeSettings(max_connections=600).max_connections == 600
    with pytest.raises(ValueError, match=r"MAX_CONNECTIONS 1024 needs up to 1472 file descriptors"):
        EdgeLiteSettings(onnx_dir=Path("export"), max_connections=1024)  # NOTE: the same field and check
    monkeypatch.setenv("SPLITINFER_MAX_CONNECTIONS", "8")
    assert EdgeSettings().max_connections == 8


_UNDER_A_LOW_SOFT_LIMIT = """
import resource, sys
import splitinfer.serve
from {module} import main

_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # macOS's default soft limit
served = []
splitinfer.serve.run_service = lambda app, settings, **_: served.append(settings)
code = main({argv})
print(code, served[0].max_connections, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""
_SERVICES = {
    "splitinfer edge": ("splitinfer.cli", ["edge", "--model", "tests.fixture_models:tiny_cnn", "--weights", "none"]),
    "edge_lite": ("edge_lite.__main__", ["--onnx-dir", "."]),  # NOTE: the export is read in the lifespan
}


@pytest.mark.parametrize("service", list(_SERVICES))
def test_a_low_soft_file_limit_is_raised_so_the_default_is_not_one_connection(service: str) -> None:
    """Under ``ulimit -Sn 256`` (hard limit higher) the default was MAX_CONNECTIONS 1: a second idle
    connection made every request a 503. The service raises its soft limit first, as far as the hard one."""
    import resource
    import subprocess
    import sys

    module, argv = _SERVICES[service]
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = connections.connection_ceiling(connections.DEFAULT_MAX_CONNECTIONS) + connections.RESERVED_FDS
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"the hard open-files limit ({hard}) is below {needed}")
    done = subprocess.run(
        [sys.executable, "-c", _UNDER_A_LOW_SOFT_LIMIT.format(module=module, argv=[*argv, "--port", "0"])],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", str(connections.DEFAULT_MAX_CONNECTIONS), str(needed)]


def test_a_default_lowered_to_fit_the_file_limit_is_said_at_startup(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from splitinfer.serve import warn_of_a_lowered_connection_limit

    monkeypatch.setattr(serving, "open_files_limit", lambda: 400)
    monkeypatch.setattr("splitinfer.serve.open_files_limit", lambda: 400)
    settings = EdgeSettings()
    assert settings.max_connections == 71
    with caplog.at_level("WARNING", logger="splitinfer"):
        warn_of_a_lowered_connection_limit(settings)
        warn_of_a_lowered_connection_limit(EdgeSettings(max_connections=71))  # NOTE: chosen: no warning
    assert [r.getMessage()[:65] for r in caplog.records] == [
        "MAX_CONNECTIONS is 71, not 1024: this process may open 400 file d"
    ]


def test_when_no_max_connections_fits_the_refusal_says_how_far_to_raise_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under ``ulimit -n 256`` (hard too) the advice was "lower MAX_CONNECTIONS to 1" to one who set 1."""
    monkeypatch.setattr(serving, "open_files_limit", lambda: 256)
    with pytest.raises(
        ValueError, match=r"\(ulimit -n\): raise that limit to 329 at least \(no MAX_CONNECTIONS fits\)"
    ):
        EdgeSettings(max_connections=1)
    assert connections.lowered_default_warning(1, False, 256) is not None
    assert "set MAX_CONNECTIONS" not in str(connections.lowered_default_warning(1, False, 256))
    assert "set MAX_CONNECTIONS" in str(connections.lowered_default_warning(71, False, 400))
