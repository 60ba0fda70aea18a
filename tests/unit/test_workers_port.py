"""``splitinfer cloud --workers N`` refuses a port something is bound to, as a single cloud does."""

from __future__ import annotations

import socket

import pytest

from cloud_service.settings import CloudSettings
from splitinfer.cli import main
from splitinfer.failures import CliError
from splitinfer.processes import free_port
from splitinfer.workers import _Supervisor, reuse_port_socket, run_workers


class _Started(Exception):
    """The supervisor was asked to start workers (none is)."""


def _no_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    def start(self: _Supervisor, count: int) -> None:
        raise _Started

    monkeypatch.setattr(_Supervisor, "start", start)


def test_a_second_workers_cloud_does_not_join_the_port_of_a_running_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: its SO_REUSEPORT socket bound beside the running cloud's workers, and the kernel spread the
    # edges' connections over both clouds.
    _no_workers(monkeypatch)
    port = free_port()
    with reuse_port_socket("127.0.0.1", port):  # a worker of the running cloud
        settings = CloudSettings(model="tests.fixture_models:tiny_cnn", weights="none", port=port, workers=2)
        with pytest.raises(CliError, match=f"port {port} on 127.0.0.1 is already in use"):
            run_workers(settings)


def test_a_port_a_single_cloud_holds_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    # Before: OSError: [Errno 98] Address already in use, with its traceback.
    port = free_port()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        argv = ["cloud", "--model", "resnet18", "--weights", "none", "--workers", "2", "--port", str(port)]
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"splitinfer: error: port {port} on 127.0.0.1 is already in use" in err


def test_a_free_port_still_starts_the_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_workers(monkeypatch)
    settings = CloudSettings(model="tests.fixture_models:tiny_cnn", weights="none", port=free_port(), workers=2)
    with pytest.raises(_Started):
        run_workers(settings)
