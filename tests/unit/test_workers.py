"""The ``--workers`` supervisor's rules, with small real processes in place of cloud workers (no torch).

Each stand-in reads the same stdin message a worker does and writes the readiness byte (or not) to the
pipe it names; the supervisor is driven round by round, so the races are played in a fixed order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from splitinfer.workers import _remove_orphaned_metrics, _spawn, _Supervisor, _Worker, backoff_s

READY = "import json, os, sys, time; m = json.load(sys.stdin); os.write(m['ready_fd'], b'1'); "
CRASH_WHEN_READY = READY + "time.sleep(0.1); sys.exit(1)"
SERVE = READY + "time.sleep(60)"
FAIL_TO_LOAD = "import sys; sys.stdin.read(); sys.exit(3)"
STOP_CLEANLY = READY + "sys.exit(0)"
BEATING = (
    "import json, os, sys, time\nm = json.load(sys.stdin)\n"
    "for _ in range(600):\n    os.write(m['ready_fd'], b'1')\n    time.sleep(0.05)"
)


def scripted(*entries: str) -> Callable[[dict[str, Any]], _Worker]:
    """A spawn that starts the next of ``entries`` each time (and fails the test past the last one)."""
    queue = list(entries)

    def spawn(settings: dict[str, Any]) -> _Worker:
        assert queue, "the supervisor started one worker too many"
        return _spawn(settings, entry=queue.pop(0))

    return spawn


@pytest.fixture
def supervisors() -> Any:
    started: list[_Supervisor] = []

    def make(*entries: str) -> _Supervisor:
        supervisor = _Supervisor({}, spawn=scripted(*entries))
        started.append(supervisor)
        return supervisor

    yield make
    for supervisor in started:
        supervisor.kill_all()


def steps_until(supervisor: _Supervisor, condition: Callable[[], bool], rounds: int = 100) -> None:
    for _ in range(rounds):  # NOTE: a round waits at most 0.2 s
        if condition():
            return
        assert not supervisor.step(), "the supervisor finished first"
    raise AssertionError("the condition did not hold in time")


def test_a_ready_worker_that_dies_is_replaced_and_sigterm_then_stops_all(supervisors: Any) -> None:
    supervisor = supervisors(CRASH_WHEN_READY, SERVE)
    supervisor.start(1)
    first = supervisor.workers()[0]
    steps_until(supervisor, lambda: supervisor.restarts == 1)
    replacement = supervisor.workers()[0]
    assert first.process.returncode == 1
    assert replacement is not first
    steps_until(supervisor, lambda: replacement.ready)
    supervisor.request_stop(signal.SIGTERM)
    assert supervisor.run() == 0
    assert replacement.process.returncode == -signal.SIGTERM  # NOTE: the stop was forwarded
    assert supervisor.restarts == 1


LOADING = "import sys, time; sys.stdin.read(); time.sleep(60)"


def test_a_worker_that_dies_before_any_is_ready_ends_everything(supervisors: Any) -> None:
    supervisor = supervisors(FAIL_TO_LOAD, LOADING)
    supervisor.start(2)
    failing, loading = supervisor.workers()
    started = time.monotonic()
    assert supervisor.run() == 1
    assert time.monotonic() - started < 30
    assert supervisor.restarts == 0
    assert supervisor.failure is not None
    assert f"cloud worker {failing.process.pid} died (exit status 3) before any worker was ready" in supervisor.failure
    assert "its error is above" in supervisor.failure
    assert loading.process.returncode == -signal.SIGTERM


def test_a_worker_killed_while_loading_beside_a_ready_one_is_replaced(supervisors: Any) -> None:
    """At start-up N models load at once, the likeliest moment for the OOM killer: once a sibling has loaded
    with the same settings, a worker killed while loading is no startup mistake."""
    supervisor = supervisors(SERVE, LOADING, SERVE)
    supervisor.start(2)
    serving, loading = supervisor.workers()
    steps_until(supervisor, lambda: serving.ready)
    loading.process.kill()
    steps_until(supervisor, lambda: supervisor.restarts == 1)
    assert supervisor.failure is None and serving.process.poll() is None
    supervisor.request_stop(signal.SIGTERM)
    assert supervisor.run() == 0


def test_a_replacement_that_cannot_be_started_is_tried_again(supervisors: Any) -> None:
    """fork's ENOMEM right after an OOM kill must not take the serving workers down."""
    entries = [CRASH_WHEN_READY, SERVE]
    failures = [OSError(12, "Cannot allocate memory")]

    def spawn(settings: dict[str, Any]) -> _Worker:
        if len(entries) == 1 and failures:
            raise failures.pop()
        return _spawn(settings, entry=entries.pop(0))

    supervisor = _Supervisor({}, spawn=spawn)
    try:
        supervisor.start(1)
        steps_until(supervisor, lambda: supervisor.restarts == 1, rounds=200)
        assert not failures and supervisor.failure is None
        assert supervisor.slots[0].quick_deaths == 2  # NOTE: the failed start backed off too
    finally:
        supervisor.kill_all()


def test_a_death_as_sigterm_arrives_is_not_replaced(supervisors: Any) -> None:
    """The worker dies, then the parent is told to stop before it noticed: no replacement, exit 0."""
    supervisor = supervisors(CRASH_WHEN_READY, SERVE)
    supervisor.start(2)
    crashing, serving = supervisor.workers()
    steps_until(supervisor, lambda: crashing.ready and serving.ready)
    crashing.process.wait(10)
    supervisor.request_stop(signal.SIGTERM)
    assert supervisor.run() == 0  # NOTE: the scripted spawn fails the test if a third worker starts
    assert supervisor.restarts == 0
    assert serving.process.returncode == -signal.SIGTERM


def test_a_death_noticed_just_before_sigterm_is_not_replaced(supervisors: Any) -> None:
    """The parent has seen the death and waits out the backoff when the stop comes: it is cancelled."""
    supervisor = supervisors(CRASH_WHEN_READY, SERVE)
    supervisor.start(2)
    crashing, _ = supervisor.workers()
    steps_until(supervisor, lambda: crashing.process.poll() is not None and supervisor.slots[0].restart_at is not None)
    supervisor.request_stop(signal.SIGTERM)
    assert supervisor.run() == 0
    assert supervisor.restarts == 0


def test_a_worker_that_stops_cleanly_is_not_replaced(supervisors: Any) -> None:
    supervisor = supervisors(STOP_CLEANLY)
    supervisor.start(1)
    assert supervisor.run() == 0
    assert supervisor.restarts == 0


def test_replacements_back_off() -> None:
    assert [backoff_s(n) for n in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff_s(10_000) == 10.0


KILLED_WHILE_LOADING = "import json, os, signal, sys; json.load(sys.stdin); os.kill(os.getpid(), signal.SIGKILL)"


def test_a_replacement_killed_while_loading_is_replaced_again(supervisors: Any) -> None:
    """The OOM killer picks a replacement at its memory peak, while it loads the model: the settings have
    loaded in that slot before, so this is no startup mistake; the cloud keeps its serving worker and
    replaces the replacement (backing off) instead of stopping."""
    supervisor = supervisors(SERVE, CRASH_WHEN_READY, KILLED_WHILE_LOADING, SERVE)
    supervisor.start(2)
    serving, _ = supervisor.workers()
    steps_until(supervisor, lambda: supervisor.restarts == 1)
    killed = supervisor.slots[1].worker
    assert killed is not None
    steps_until(supervisor, lambda: supervisor.restarts == 2, rounds=200)
    assert killed.process.returncode == -signal.SIGKILL and not killed.ready
    assert supervisor.failure is None
    assert supervisor.slots[1].quick_deaths == 2  # NOTE: the second replacement waited 1 s, not 0.5 s
    last = supervisor.slots[1].worker
    assert last is not None and last is not killed
    steps_until(supervisor, lambda: last.ready)
    assert serving.process.poll() is None  # NOTE: never stopped
    supervisor.request_stop(signal.SIGTERM)
    assert supervisor.run() == 0


def test_a_ready_worker_that_falls_silent_is_killed_and_replaced() -> None:
    """A worker stopped (SIGSTOP) or with its event loop blocked still holds its socket: the kernel keeps
    giving it connections that nobody answers."""
    supervisor = _Supervisor({}, spawn=scripted(SERVE, BEATING), silent_s=0.6)
    try:
        supervisor.start(1)
        silent = supervisor.workers()[0]
        steps_until(supervisor, lambda: supervisor.restarts == 1)
        assert silent.process.returncode == -signal.SIGKILL
        beating = supervisor.workers()[0]
        steps_until(supervisor, lambda: beating.ready)
        until = time.monotonic() + 3 * supervisor.silent_s  # NOTE: heartbeats end a round early: count time
        for _ in range(1000):
            if time.monotonic() > until:
                break
            assert not supervisor.step()
        assert supervisor.workers() == [beating] and beating.process.poll() is None
        assert supervisor.restarts == 1
    finally:
        supervisor.kill_all()


# The loading deadline: a worker that never gets ready (a load stuck on a network filesystem, a deadlock, SIGSTOP)


def test_a_worker_stopped_while_loading_ends_the_cloud_at_the_deadline() -> None:
    """With one worker that never gets ready, the cloud would neither serve nor exit: past the deadline the
    worker is killed (SIGKILL, since a stopped process leaves SIGTERM pending) and the parent exits 1."""
    supervisor = _Supervisor({}, spawn=scripted(LOADING), load_timeout_s=1.0, kill_grace_s=0.5)
    try:
        supervisor.start(1)
        stuck = supervisor.workers()[0]
        os.kill(stuck.process.pid, signal.SIGSTOP)
        started = time.monotonic()
        assert supervisor.run() == 1
        assert time.monotonic() - started < 15
        assert stuck.process.returncode == -signal.SIGKILL
        assert supervisor.restarts == 0
        assert supervisor.failure is not None
        assert (
            f"cloud worker {stuck.process.pid} was not ready within the loading deadline of 1 s" in supervisor.failure
        )
        assert "--worker-load-timeout-s, SPLITINFER_WORKER_LOAD_TIMEOUT_S" in supervisor.failure
    finally:
        supervisor.kill_all()


def test_a_worker_past_the_deadline_that_exits_on_sigterm_still_ends_the_cloud(supervisors: Any) -> None:
    """SIGTERM is a stop on purpose only when the parent did not send it for the deadline."""
    supervisor = supervisors(LOADING)
    supervisor.load_timeout_s = 0.5
    supervisor.start(1)
    stuck = supervisor.workers()[0]
    assert supervisor.run() == 1
    assert stuck.process.returncode == -signal.SIGTERM
    assert supervisor.failure is not None and "loading deadline" in supervisor.failure


def test_a_worker_past_the_deadline_beside_a_ready_one_is_replaced(supervisors: Any) -> None:
    supervisor = supervisors(SERVE, LOADING, SERVE)
    supervisor.start(2)
    serving, stuck = supervisor.workers()
    steps_until(supervisor, lambda: serving.ready)
    supervisor.load_timeout_s = 0.5  # NOTE: only now, so that the deadline cannot pass before `serving` loads
    steps_until(supervisor, lambda: supervisor.restarts == 1, rounds=100)
    supervisor.load_timeout_s = 600.0  # NOTE: the replacement may take longer than 0.5 s on a busy machine
    assert stuck.process.returncode == -signal.SIGTERM
    assert supervisor.failure is None and serving.process.poll() is None
    assert "past the loading deadline of 0.5 s" in supervisor.slots[1].replaces
    replacement = supervisor.slots[1].worker
    assert replacement is not None and replacement is not stuck
    steps_until(supervisor, lambda: replacement.ready)
    supervisor.request_stop(signal.SIGTERM)
    assert supervisor.run() == 0


IGNORING_SIGTERM = (
    "import json, pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "pathlib.Path(json.load(sys.stdin)['settings']['marker']).touch(); time.sleep(60)"
)


def test_the_deadline_holds_while_stopping(tmp_path: Path) -> None:
    """A loading worker that ignores the forwarded stop cannot keep the parent from exiting."""
    marker = tmp_path / "ignoring"
    supervisor = _Supervisor(
        {"marker": str(marker)}, spawn=scripted(IGNORING_SIGTERM), load_timeout_s=1.0, kill_grace_s=0.5
    )
    try:
        supervisor.start(1)
        stuck = supervisor.workers()[0]
        for _ in range(200):
            if marker.exists():
                break
            time.sleep(0.05)
        assert marker.exists()
        supervisor.request_stop(signal.SIGTERM)
        started = time.monotonic()
        assert supervisor.run() == 0
        assert time.monotonic() - started < 15
        assert stuck.process.returncode == -signal.SIGKILL
    finally:
        supervisor.kill_all()


def test_a_worker_runs_in_a_process_group_of_its_own() -> None:
    """Ctrl-C in a terminal signals the foreground process group: the parent's, not the workers'."""
    worker = _spawn({}, entry=LOADING)
    try:
        assert os.getpgid(worker.process.pid) == worker.process.pid != os.getpgrp()
    finally:
        worker.process.kill()
        worker.process.wait()
        worker.close()


def test_the_metrics_directories_of_parents_that_are_gone_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A parent killed outright (SIGKILL, the terminal closed) leaves its workers' metrics directory behind;
    the next parent removes it, and no directory of a parent still running."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    orphan = tmp_path / f"splitinfer-metrics-{gone.pid}-abc"
    running = tmp_path / f"splitinfer-metrics-{os.getpid()}-def"
    other = tmp_path / "splitinfer-metrics-notapid-ghi"
    for directory in (orphan, running, other):
        directory.mkdir()
        (directory / "counter_1.db").write_bytes(b"x")
    _remove_orphaned_metrics()
    assert not orphan.exists()
    assert running.exists() and other.exists()
