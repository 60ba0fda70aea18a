"""``splitinfer up``/``demo`` refuse a port something listens on, not one a service just stopped served on."""

from __future__ import annotations

import socket

import pytest

from splitinfer.checks import check_port_free
from splitinfer.failures import CliError
from splitinfer.processes import free_port


def _listener(port: int) -> socket.socket:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
    server.bind(("127.0.0.1", port))
    server.listen()
    return server


def test_a_port_whose_last_connections_wait_in_time_wait_is_free() -> None:
    # Before: a service that closed a connection first (shutting down, dropping an idle keep-alive) left it
    # in TIME_WAIT for a minute, and `splitinfer up` run again said the port was in use; uvicorn binds it.
    port = free_port()
    server = _listener(port)
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server side closes first: its end waits in TIME_WAIT
    assert client.recv(1) == b""
    client.close()
    server.close()
    check_port_free("127.0.0.1", port, "--cloud-port")
    _listener(port).close()  # and uvicorn can indeed bind it


def test_a_port_something_listens_on_is_refused() -> None:
    port = free_port()
    with _listener(port), pytest.raises(CliError, match=f"port {port} on 127.0.0.1 is already in use"):
        check_port_free("127.0.0.1", port, "--cloud-port")


@pytest.mark.parametrize("port", [0, -1, 65536, 99999])
def test_a_number_that_is_no_port_is_refused(port: int) -> None:
    # Before: bind() raised OverflowError, and `splitinfer up --edge-port 99999` printed its traceback.
    with pytest.raises(CliError, match=f"--edge-port {port} is not a port: use 1-65535"):
        check_port_free("127.0.0.1", port, "--edge-port")
