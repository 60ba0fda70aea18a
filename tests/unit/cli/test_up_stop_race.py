"""A stop signal that reaches ``splitinfer up`` while it starts a service: that service is stopped with the
other before ``up`` exits (it was left out of the processes ``up`` stops, and died only of its parent-death
signal after ``up`` had exited: a flaky ``test_sigterm_while_the_models_load_stops_both_at_once``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from splitinfer import checks, cli, processes


@pytest.fixture
def handlers_restored() -> Iterator[None]:
    """``up`` installs its own SIGTERM and SIGHUP handlers in this (the test's) process."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize("signalled", ["cloud", "edge"])
@pytest.mark.usefixtures("handlers_restored")
def test_a_stop_signal_while_a_service_starts_stops_it_too(signalled: str, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[subprocess.Popen[bytes]] = []

    def spawn(command: Sequence[str], **_: Any) -> subprocess.Popen[bytes]:
        process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
        started.append(process)
        if command[3] == signalled:
            os.kill(os.getpid(), signal.SIGTERM)  # NOTE: its handler runs before this function returns
        return process

    monkeypatch.setattr(processes, "spawn", spawn)
    monkeypatch.setattr(checks, "check_port_free", lambda *_: None)
    args = cli.build_parser().parse_args(["up", "--model", "resnet18", "--weights", "none"])
    try:
        assert cli._run_pair(args) == 0
        assert [p.poll() for p in started] == [-signal.SIGTERM] * len(started), "a service outlived `up`"
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait()
