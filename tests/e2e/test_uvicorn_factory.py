"""A service run by uvicorn itself (``uvicorn --factory``), given the services' HTTP protocol with
``--http splitinfer.http_protocol:ServiceHTTPProtocol``, as the README's Configuration section says:
the 431 for an oversized head, problem+json for a request the parser refuses, and the connection cap."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from splitinfer.processes import Service, free_port, spawn, wait_until
from tests.support.raw_http import exchange, hold_served_connections, read_until_closed

pytestmark = pytest.mark.e2e

_TIMEOUT_S = 10.0
_GET = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
CAP = 4


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Service]:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "--factory", "cloud_service.app:create_app"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--http", "splitinfer.http_protocol:ServiceHTTPProtocol"]
    command += ["--ws", "none", "--limit-concurrency", str(CAP), "--h11-max-incomplete-event-size", "65536"]
    env = {"SPLITINFER_MODEL": "tests.fixture_models:tiny_cnn", "SPLITINFER_WEIGHTS": "none", "SPLITINFER_THREADS": "1"}
    log = tmp_path / "cloud.log"
    service = Service("cloud", port, spawn(command, log=log, env=env), log)
    try:
        wait_until(service)
        yield service
    finally:
        service.stop()


def test_uvicorn_factory_with_the_services_protocol_gets_their_bounds(cloud: Service) -> None:
    with socket.create_connection(("127.0.0.1", cloud.port)) as conn:
        conn.settimeout(_TIMEOUT_S)
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Filler: " + b"a" * 200_000 + b"\r\n\r\n"
        conn.sendall(head)
        answer = read_until_closed(conn, _TIMEOUT_S)
    assert answer is not None and answer.startswith(b"HTTP/1.1 431 "), answer
    assert b"content-type: application/problem+json" in answer.lower()

    with socket.create_connection(("127.0.0.1", cloud.port)) as bad:
        status, headers, body = exchange(bad, b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n")
    assert status == "HTTP/1.1 400 Bad Request" and headers["content-type"] == "application/problem+json"
    assert json.loads(body)["status"] == 400

    with ExitStack() as stack:
        hold_served_connections(stack, cloud.port, CAP, _GET, _TIMEOUT_S)
        with socket.create_connection(("127.0.0.1", cloud.port)) as beyond:
            status, headers, body = exchange(beyond, _GET, _TIMEOUT_S)
    assert status == "HTTP/1.1 503 Service Unavailable" and headers["retry-after"] == "1"
    assert json.loads(body)["detail"] == f"the server is serving {CAP} connections, its limit; retry shortly"
