"""Real service processes with ``--max-connections 8``: the ninth open connection's request gets a
problem+json 503 with Retry-After and is closed; once the others close, requests succeed again. HEAD on a
GET route answers GET's headers with no body through the real HTTP server."""

from __future__ import annotations

import json
import socket
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from splitinfer.processes import Service, start_service, wait_until
from tests.support.raw_http import exchange, hold_served_connections

pytestmark = pytest.mark.e2e

TINY = ["--model", "tests.fixture_models:tiny_cnn", "--weights", "none"]
CAP = 8
_TIMEOUT_S = 10.0


def _exchange(conn: socket.socket, request: bytes) -> tuple[str, dict[str, str], bytes]:
    return exchange(conn, request, _TIMEOUT_S)


@pytest.mark.parametrize("kind", ["cloud", "edge"])
def test_connections_beyond_the_limit_get_503_until_others_close(
    kind: str, tmp_path: Path, stop_all: list[Service]
) -> None:
    args = [*TINY, "--max-connections", str(CAP), *(["--cut", "output"] if kind == "edge" else [])]
    service = start_service(kind, args, tmp_path)
    stop_all.append(service)
    wait_until(service)
    get = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with ExitStack() as stack:
        held = hold_served_connections(stack, service.port, CAP, get, _TIMEOUT_S)

        with socket.create_connection(("127.0.0.1", service.port)) as extra:
            status, headers, body = _exchange(extra, get)
            assert status == "HTTP/1.1 503 Service Unavailable"
            assert headers["content-type"] == "application/problem+json"
            assert headers["retry-after"] == "1" and headers["connection"] == "close"
            problem = json.loads(body)
            assert problem["status"] == 503
            assert problem["detail"] == f"the server is serving {CAP} connections, its limit; retry shortly"
            extra.settimeout(_TIMEOUT_S)
            assert extra.recv(1) == b""  # closed by the server

        # HEAD through the real server: GET's status and headers, no body (the next answer follows at once)
        status, headers, _ = _exchange(held[0], b"HEAD /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert status == "HTTP/1.1 200 OK" and headers["content-length"] == "15"
        status, _, body = _exchange(held[0], get)
        assert status == "HTTP/1.1 200 OK" and json.loads(body) == {"status": "ok"}
        # NOTE: the refusal never reached the app's request metrics; it has its own counter
        status, _, body = _exchange(held[0], b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert status == "HTTP/1.1 200 OK"
        assert 'splitinfer_connections_refused_total{how="answered"} 1.0' in body.decode(), body.decode()

    deadline = time.monotonic() + _TIMEOUT_S
    while (response := httpx.get(f"{service.url}/healthz", timeout=_TIMEOUT_S)).status_code != 200:
        assert time.monotonic() < deadline, response.text  # NOTE: the server sees the closes a moment later
        time.sleep(0.05)
    assert service.process.poll() is None
