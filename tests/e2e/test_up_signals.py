"""``splitinfer up`` stops both services on SIGHUP, and says which one died when one does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from splitinfer.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
START_S = 120


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, list[int]]]:
    edge_port, cloud_port = free_port(), free_port()
    command = [sys.executable, "-m", "splitinfer", "up", "--model", "resnet18", "--weights", "none"]
    command += ["--edge-port", str(edge_port), "--cloud-port", str(cloud_port)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    log = tmp_path / "up.log"  # NOTE: a file, not a pipe: the services log to it too, and nobody reads a pipe
    with log.open("wb") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    # NOTE: until `up` itself has seen both ready (it prints this then): a service that dies while `up` still
    # waits for readiness is a failed start (status 2), not a service that died (status 1)
    deadline = time.monotonic() + START_S
    while "Ctrl-C stops both." not in log.read_text():
        assert time.monotonic() < deadline and process.poll() is None, log.read_text()
        time.sleep(0.3)
    assert httpx.get(f"http://127.0.0.1:{edge_port}/readyz", timeout=5).status_code == 200
    children = _children(process.pid)
    assert len(children) == 2
    yield process, log, children
    for pid in children:  # NOTE: what a failed test leaves
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
    if process.poll() is None:
        process.kill()
    process.wait()


def test_sighup_stops_both_services(up: tuple[subprocess.Popen[bytes], Path, list[int]]) -> None:
    # Before: `up` died of the SIGHUP and left the edge and the cloud (in sessions of their own) serving.
    process, _, children = up
    process.send_signal(signal.SIGHUP)
    assert process.wait(60) == 0
    assert not [pid for pid in children if _alive(pid)]


def test_a_service_that_dies_is_named_and_both_stop(up: tuple[subprocess.Popen[bytes], Path, list[int]]) -> None:
    # Before: `up` stopped with status 1 and only "stopping the edge, then the cloud...", never saying why.
    process, log, children = up
    cloud = next(pid for pid in children if "\0cloud\0" in Path(f"/proc/{pid}/cmdline").read_text())  # not --cloud-url
    os.kill(cloud, signal.SIGKILL)
    assert process.wait(60) == 1
    assert "splitinfer: error: the cloud exited (killed by SIGKILL)" in log.read_text()
    assert not [pid for pid in children if _alive(pid)]


def test_sigkill_of_up_stops_both_services(up: tuple[subprocess.Popen[bytes], Path, list[int]]) -> None:
    # Before: no handler sees SIGKILL (the OOM killer's, a `kill -9`), and both services kept serving.
    process, _, children = up
    process.kill()
    process.wait(10)
    deadline = time.monotonic() + 60
    while [pid for pid in children if _alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in children if _alive(pid)]


def test_sigterm_while_the_models_load_stops_both_at_once(tmp_path: Path) -> None:
    """Before: `up` acted on SIGTERM only once both services were ready (it printed their addresses, then
    stopped them); the first SIGTERM now interrupts the wait."""
    command = [sys.executable, "-m", "splitinfer", "up", "--model", "resnet18", "--weights", "none"]
    command += ["--edge-port", str(free_port()), "--cloud-port", str(free_port())]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    log = tmp_path / "up.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while len(children := _children(process.pid)) < 2:  # NOTE: both spawned, neither has loaded torch yet
            assert time.monotonic() < deadline and process.poll() is None, log.read_text()
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log.read_text()
        output = log.read_text()
        assert "Ctrl-C stops both." not in output, output
        assert "stopping the edge, then the cloud" in output
        assert not [pid for pid in children if _alive(pid)]
    finally:
        for pid in _children(process.pid):
            os.killpg(pid, signal.SIGKILL)
        if process.poll() is None:
            process.kill()
        process.wait()
