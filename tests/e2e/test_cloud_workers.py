"""``splitinfer cloud --workers 2``: two real processes share one port and both serve tails."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service_core.http import SERVED_BY_HEADER
from shared.models import load_model
from shared.wire import MEDIA_TYPE
from splitinfer.bench import cloud_payloads
from splitinfer.processes import Service, free_port, start_service, wait_until
from splitinfer.samples import encode_image, synthetic_image
from tests.support.raw_http import exchange, read_until_closed

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    cloud = start_service(
        "cloud", ["--model", "resnet18", "--weights", "none", "--workers", "2"], tmp_path_factory.mktemp("logs")
    )
    try:
        wait_until(cloud)
        yield cloud
    finally:
        cloud.stop()


def test_two_workers_on_one_port_both_serve(two_workers: Service) -> None:
    payload = cloud_payloads(load_model("resnet18", "none"), "avgpool", "fp32", [encode_image(synthetic_image())])[0]
    served_by: set[str] = set()
    deadline = time.monotonic() + 120  # NOTE: the second worker may still be loading its model
    while len(served_by) < 2 and time.monotonic() < deadline:
        # NOTE: a new connection each time: the kernel picks a worker per connection (SO_REUSEPORT).
        response = httpx.post(
            two_workers.url + "/v1/tail", content=payload, headers={"content-type": MEDIA_TYPE}, timeout=30
        )
        assert response.status_code == 200, response.text
        served_by.add(response.headers[SERVED_BY_HEADER])
    assert len(served_by) == 2, served_by
    assert len({instance.rsplit(":", 1)[1] for instance in served_by}) == 2  # two processes (pids)


def test_workers_stop_with_their_parent(two_workers: Service) -> None:
    """SIGTERM to the parent drains and stops every worker: nothing listens on the port afterwards."""
    assert two_workers.stop() == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(two_workers.url + "/healthz", timeout=5)


# Supervision: a dead worker is replaced, a worker that cannot start ends the cloud, SIGTERM still drains.

TINY = ["--model", "tests.fixture_models:tiny_cnn", "--weights", "none"]
_PIDS = re.compile(r"workers on \S+ \(pids \[([\d, ]+)\]\)")
_REPLACED = re.compile(r"cloud worker (\d+) replaces worker (\d+) \(killed by SIGKILL\)")


def _tail(url: str, payload: bytes) -> httpx.Response:
    """POST one tail on a new connection; a reset from a worker dying under it is retried once."""
    for attempt in range(2):
        try:
            return httpx.post(url + "/v1/tail", content=payload, headers={"content-type": MEDIA_TYPE}, timeout=30)
        except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
            if attempt:
                raise
    raise AssertionError("unreachable")


def _served_by(response: httpx.Response) -> int:
    assert response.status_code == 200, response.text
    return int(response.headers[SERVED_BY_HEADER].rsplit(":", 1)[1])


def _wait_for_log(service: Service, pattern: re.Pattern[str], timeout_s: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = pattern.search(service.output())
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"no {pattern.pattern!r} in the log within {timeout_s} s:\n{service.output()}")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(scope="module")
def tiny_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, bytes]]:
    cloud = start_service("cloud", [*TINY, "--workers", "2"], tmp_path_factory.mktemp("logs"))
    try:
        wait_until(cloud)
        payload = cloud_payloads(load_model(TINY[1], "none"), "block", "fp32", [encode_image(synthetic_image())])[0]
        # NOTE: /readyz answers once one worker is ready; killing it while the other still loads would leave
        # nobody listening. Both serve first.
        serving: set[int] = set()
        deadline = time.monotonic() + 60
        while len(serving) < 2 and time.monotonic() < deadline:
            serving.add(_served_by(_tail(cloud.url, payload)))
        assert len(serving) == 2, cloud.output()
        yield cloud, payload
    finally:
        cloud.stop()


def _first_pids(cloud: Service) -> set[int]:
    found = _PIDS.search(cloud.output())
    assert found, cloud.output()
    return {int(pid) for pid in found.group(1).split(",")}


def _kill_one_and_serve_on(cloud: Service, payload: bytes) -> tuple[int, int]:
    """SIGKILL the worker that answers a tail; tails keep succeeding until a new worker answers one: (dead, new)."""
    before = {_served_by(_tail(cloud.url, payload))} | _first_pids(cloud)
    before |= {int(found.group(1)) for found in _REPLACED.finditer(cloud.output())}
    victim = _served_by(_tail(cloud.url, payload))
    os.kill(victim, signal.SIGKILL)
    served: set[int] = set()
    deadline = time.monotonic() + 60  # NOTE: a fresh worker imports torch and loads the model (seconds)
    while not served - before and time.monotonic() < deadline:
        served.add(_served_by(_tail(cloud.url, payload)))  # NOTE: every tail succeeds meanwhile
        assert cloud.process.poll() is None, cloud.output()
        time.sleep(0.05)
    replaced = [found for found in _REPLACED.finditer(cloud.output()) if int(found.group(2)) == victim]
    assert len(replaced) == 1, cloud.output()
    new = int(replaced[0].group(1))
    assert served - before == {new}, (served, before, new)
    assert victim not in served
    assert _gone(victim)
    return victim, new


def test_a_killed_worker_is_replaced_while_the_other_serves(tiny_workers: tuple[Service, bytes]) -> None:
    cloud, payload = tiny_workers
    first = _first_pids(cloud)
    assert len(first) == 2
    victim, new = _kill_one_and_serve_on(cloud, payload)
    assert victim in first
    assert new not in first
    assert f"cloud worker {victim} died (killed by SIGKILL)" in cloud.output()


_TAILS_COUNTED = re.compile(r'^splitinfer_requests_total\{[^}]*route="/v1/tail"[^}]*status="200"[^}]*\} (\S+)$', re.M)


def _tails_counted(url: str, scrapes: int = 6) -> list[float]:
    """The tails each of ``scrapes`` scrapes of /metrics counts (a new connection each: any worker answers)."""
    counted = []
    for _ in range(scrapes):
        response = httpx.get(url + "/metrics", timeout=10)
        assert response.status_code == 200, response.text
        found = _TAILS_COUNTED.search(response.text)
        counted.append(float(found.group(1)) if found else 0.0)
    return counted


def _scrapes_agree(url: str, at_least: float, timeout_s: float = 10) -> float:
    """The count every scrape agrees on, once it is at least ``at_least`` (a worker counts a request just
    after its reply is sent)."""
    deadline = time.monotonic() + timeout_s
    while True:
        counted = _tails_counted(url)
        if len(set(counted)) == 1 and counted[0] >= at_least:
            return counted[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"scrapes counted {counted} tails, expected all the same and >= {at_least}")
        time.sleep(0.1)


def _metrics_dir(pid: int) -> Path:
    for variable in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        name, _, value = variable.partition(b"=")
        if name == b"PROMETHEUS_MULTIPROC_DIR":
            return Path(value.decode())
    raise AssertionError(f"worker {pid} has no metrics directory")


def test_every_scrape_counts_every_worker_s_requests_a_dead_one_s_too(tiny_workers: tuple[Service, bytes]) -> None:
    """/metrics answers from whichever worker the kernel picks; each adds up every worker's counts, and a
    replaced worker's counts are kept (folded into the retired totals, its own files gone)."""
    cloud, payload = tiny_workers
    before = _scrapes_agree(cloud.url, 0)
    served = {_served_by(_tail(cloud.url, payload)) for _ in range(10)}
    assert _scrapes_agree(cloud.url, before + 10) == before + 10, served
    victim, new = _kill_one_and_serve_on(cloud, payload)
    assert _scrapes_agree(cloud.url, before + 12) >= before + 12
    directory = _metrics_dir(new)
    assert not list(directory.glob(f"*_{victim}.db")), sorted(directory.iterdir())
    assert (directory / "counter_retired.db").is_file()


def test_sigterm_after_a_restart_stops_everything(tiny_workers: tuple[Service, bytes]) -> None:
    """After a restart, a worker dies just as SIGTERM reaches the parent: nothing replaces it, every
    process ends, exit 0."""
    cloud, payload = tiny_workers
    if not _REPLACED.search(cloud.output()):  # NOTE: run on its own
        _kill_one_and_serve_on(cloud, payload)
    pids = _first_pids(cloud) | {int(found.group(1)) for found in _REPLACED.finditer(cloud.output())}
    alive = sorted(pid for pid in pids if not _gone(pid))
    assert len(alive) == 2, (alive, cloud.output())
    restarts = len(_REPLACED.findall(cloud.output()))
    directory = _metrics_dir(alive[1])
    os.kill(alive[0], signal.SIGKILL)
    os.kill(cloud.process.pid, signal.SIGTERM)  # NOTE: the parent alone: it forwards to its workers
    assert cloud.process.wait(30) == 0, cloud.output()
    assert all(_gone(pid) for pid in alive), cloud.output()
    assert not directory.exists()  # NOTE: the workers' metrics go with the parent
    assert len(_REPLACED.findall(cloud.output())) == restarts, cloud.output()
    with pytest.raises(httpx.ConnectError):
        httpx.get(cloud.url + "/healthz", timeout=5)


def test_a_worker_that_cannot_start_ends_the_cloud(tmp_path: Path) -> None:
    """Weights that do not load: the parent exits 1 without restarting anything."""
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"not a state dict")
    cloud = start_service("cloud", ["--model", TINY[1], "--weights", str(weights), "--workers", "2"], tmp_path)
    try:
        assert cloud.process.wait(60) == 1, cloud.output()
    finally:
        cloud.stop()
    output = cloud.output()
    assert "before any worker was ready" in output, output
    assert " replaces worker " not in output, output


def test_workers_past_the_loading_deadline_end_the_cloud(tmp_path: Path) -> None:
    """--worker-load-timeout-s reaches the supervisor: no worker is ready (importing torch alone takes
    longer than the deadline), so both are stopped and the parent exits 1 with one line saying why."""
    args = [*TINY, "--workers", "2", "--worker-load-timeout-s", "0.3"]
    cloud = start_service("cloud", args, tmp_path)
    try:
        assert cloud.process.wait(60) == 1, cloud.output()
    finally:
        cloud.stop()
    output = cloud.output()
    failures = [line for line in output.splitlines() if "was not ready within the loading deadline" in line]
    assert len(failures) == 1, output
    assert "loading deadline of 0.3 s (--worker-load-timeout-s, SPLITINFER_WORKER_LOAD_TIMEOUT_S)" in failures[0]
    assert failures[0].endswith("stopping the cloud"), failures[0]
    assert " replaces worker " not in output, output


@pytest.mark.slow
def test_workers_stop_when_their_parent_is_killed(tmp_path: Path) -> None:
    """SIGKILL to the parent alone (no drain of its own): its workers stop, nothing keeps the port."""
    cloud = start_service("cloud", [*TINY, "--workers", "2"], tmp_path)
    try:
        wait_until(cloud)
        workers = _first_pids(cloud)
        os.kill(cloud.process.pid, signal.SIGKILL)
        cloud.process.wait(10)
        deadline = time.monotonic() + 30
        while not all(_gone(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(_gone(pid) for pid in workers), cloud.output()
    finally:
        cloud.stop()
        with contextlib.suppress(ProcessLookupError):  # NOTE: workers the parent left behind (a failed run)
            os.killpg(cloud.process.pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_stopped_worker_is_killed_and_replaced(tmp_path: Path) -> None:
    """SIGSTOP to a worker (as a hung one): its heartbeats stop, and after SILENT_S the parent kills it;
    its replacement serves."""
    from splitinfer.workers import SILENT_S

    cloud = start_service("cloud", [*TINY, "--workers", "2"], tmp_path)
    try:
        wait_until(cloud)
        victim = min(_first_pids(cloud))
        time.sleep(3)  # NOTE: several heartbeats first: the silence is what counts, not the readiness byte
        os.kill(victim, signal.SIGSTOP)
        silent = re.compile(rf"cloud worker {victim} has been silent for \d+ s")
        _wait_for_log(cloud, silent, SILENT_S + 15)
        replaced = re.compile(rf"cloud worker (\d+) replaces worker {victim} \(killed by SIGKILL\)")
        _wait_for_log(cloud, replaced, 30)
        assert _gone(victim)
        assert cloud.process.poll() is None, cloud.output()
    finally:
        cloud.stop()


def test_ctrl_c_to_the_process_group_drains_every_worker(tmp_path: Path) -> None:
    """Ctrl-C in a terminal sends SIGINT to the whole foreground process group. Each worker must get one
    SIGINT (the parent's): a second one makes uvicorn stop at once when the drain window ends, cutting the
    request in flight. One is held in flight here (its body half sent) across the signal and the drain."""
    cloud = start_service("cloud", [*TINY, "--workers", "2"], tmp_path)  # NOTE: in a session of its own
    try:
        wait_until(cloud)
        payload = cloud_payloads(load_model(TINY[1], "none"), "block", "fp32", [encode_image(synthetic_image())])[0]
        serving: set[int] = set()
        deadline = time.monotonic() + 60
        while len(serving) < 2 and time.monotonic() < deadline:  # NOTE: both loaded: both drain, neither loads
            serving.add(_served_by(_tail(cloud.url, payload)))
        assert len(serving) == 2, cloud.output()
        head = (
            f"POST /v1/tail HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {MEDIA_TYPE}\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", cloud.port), timeout=20) as held:
            # NOTE: a first request answered on the connection: a worker has accepted it (one still in a
            # listening socket's backlog would be reset when the worker stops listening)
            status, _, _ = exchange(held, head + payload)
            assert status == "HTTP/1.1 200 OK", status
            held.sendall(head + payload[:100])
            os.killpg(cloud.process.pid, signal.SIGINT)  # NOTE: what the terminal does on Ctrl-C
            _wait_for_log_count(cloud, "draining: /readyz answers 503", 2, timeout_s=20)
            time.sleep(2.5)  # NOTE: past the drain window (1 s), when a worker that got two SIGINTs force-exits
            try:
                held.sendall(payload[100:])
                answer = read_until_closed(held, 15)
            except OSError:  # NOTE: the worker cut the connection (a broken pipe)
                answer = None
        assert answer is not None and answer.startswith(b"HTTP/1.1 200 OK\r\n"), (answer, cloud.output())
        assert cloud.process.wait(20) == 0, cloud.output()
        assert all(_gone(pid) for pid in serving), cloud.output()
        output = cloud.output()
        assert output.count("draining: /readyz answers 503") == 2, output
        assert "Traceback" not in output, output  # NOTE: uvicorn raises the drained SIGINT again in each worker
    finally:
        cloud.stop()


def _wait_for_log_count(service: Service, text: str, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while service.output().count(text) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{count} x {text!r} not in the log within {timeout_s} s:\n{service.output()}")
        time.sleep(0.1)


def _own_the_terminal() -> None:
    """In the child: a session whose controlling terminal is its stdin (a pty), as a shell's foreground job."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # NOTE: not SIG_IGN inherited from a backgrounded test run


def test_ctrl_c_typed_on_a_tostop_terminal_stops_every_worker(tmp_path: Path) -> None:
    """On a real terminal (a pty) set to `stty tostop`, where a background process group that writes to the
    terminal is stopped: the workers (each in its own group) still log, serve, and stop on Ctrl-C."""
    master, terminal = pty.openpty()
    modes = termios.tcgetattr(terminal)
    modes[3] |= termios.TOSTOP
    termios.tcsetattr(terminal, termios.TCSANOW, modes)
    port = free_port()
    command = [sys.executable, "-m", "splitinfer", "cloud", "--host", "127.0.0.1", "--port", str(port), *TINY]
    cloud = subprocess.Popen(
        [*command, "--workers", "2"],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        preexec_fn=_own_the_terminal,
        env={**os.environ, "SPLITINFER_THREADS": "1"},
    )
    os.close(terminal)
    screen = bytearray()
    reader = threading.Thread(target=_read_terminal, args=(master, screen), daemon=True)
    reader.start()
    try:
        payload = cloud_payloads(load_model(TINY[1], "none"), "block", "fp32", [encode_image(synthetic_image())])[0]
        serving: set[int] = set()
        deadline = time.monotonic() + 60
        while len(serving) < 2 and time.monotonic() < deadline and cloud.poll() is None:
            with contextlib.suppress(httpx.TransportError):
                serving.add(_served_by(_tail(f"http://127.0.0.1:{port}", payload)))
                continue
            time.sleep(0.2)
        assert len(serving) == 2, screen.decode(errors="replace")
        os.write(master, b"\x03")  # NOTE: Ctrl-C typed: the terminal sends SIGINT to its foreground group
        assert cloud.wait(20) == 0, screen.decode(errors="replace")
    finally:
        if cloud.poll() is None:
            os.killpg(cloud.pid, signal.SIGKILL)
            cloud.wait()
        reader.join(5)
        os.close(master)
    output = screen.decode(errors="replace")
    assert all(_gone(pid) for pid in serving), output
    assert output.count("draining: /readyz answers 503") == 2, output
    assert "Traceback" not in output, output


def _read_terminal(master: int, screen: bytearray) -> None:
    """What the terminal shows, until every process has closed it."""
    for _ in range(100_000):
        try:
            data = os.read(master, 65536)
        except OSError:  # NOTE: EIO once no process holds the terminal open
            return
        if not data:
            return
        screen.extend(data)
