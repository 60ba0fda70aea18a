"""Child processes, each in its own process group: spawn, wait until ready, stop in order.

One harness for ``splitinfer up``/``demo`` (cloud and edge as children), the tests and the benchmarks.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

__all__ = [
    "Service",
    "free_port",
    "rss_kib",
    "spawn",
    "start_service",
    "stop_all",
    "wait_ready",
    "wait_until",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_PR_SET_PDEATHSIG = 1


def _term_with_parent(parent: int) -> Callable[[], None]:
    """What the child runs before exec (Linux): SIGTERM to itself when ``parent`` dies, or has died already."""
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # NOTE: looked up before the fork, not in the child

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


def spawn(
    command: Sequence[str],
    *,
    log: Path | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    die_with_parent: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``command`` in a new process group (output appended to ``log``, else inherited).

    ``die_with_parent``: on Linux the child gets SIGTERM (and drains) when this process dies, even of SIGKILL,
    which no handler sees (the child runs in a session of its own, so nothing else would stop it). Spawn
    such a child from the main thread: the signal follows the thread that spawned it.
    """
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    preexec = _term_with_parent(os.getpid()) if die_with_parent and sys.platform.startswith("linux") else None
    if log is None:
        return subprocess.Popen(list(command), env=environment, cwd=cwd, start_new_session=True, preexec_fn=preexec)
    with log.open("ab") as sink:
        return subprocess.Popen(
            list(command),
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=preexec,
        )


def stop_all(processes: Sequence[subprocess.Popen[bytes]], timeout_s: float = 60) -> None:
    """Stop process groups one after the other: SIGTERM (a graceful drain), wait for it to exit (SIGKILL
    after ``timeout_s``), then the next. Give the edge before the cloud: the edge's requests in flight still
    need the cloud while they finish."""
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_ready(
    url: str, timeout_s: float, processes: Sequence[subprocess.Popen[bytes]] = (), status: int = 200
) -> httpx.Response:
    """Poll ``url`` until it answers ``status``; fail early when one of ``processes`` exits."""
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"a process exited with status {process.returncode} before {url} was ready")
        try:
            response = httpx.get(url, timeout=5)
            if response.status_code == status:
                return response
            last = f"{response.status_code} {response.text[:300]}"
        except httpx.TransportError as exc:
            last = str(exc)
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer {status} within {timeout_s:.0f} s (last: {last})")


@dataclass
class Service:
    """``splitinfer <name> ...`` running on a loopback port, its output in ``log``."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


def rss_kib(pid: int, field_name: str = "VmRSS") -> int:
    """Resident memory of a process (Linux), in KiB; ``VmHWM`` for its peak."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field_name} for process {pid}")


def start_service(
    kind: str,
    args: Sequence[str],
    log_dir: Path,
    port: int | None = None,
    env: dict[str, str] | None = None,
) -> Service:
    """Start ``splitinfer <kind> ARGS`` on 127.0.0.1 (one torch thread unless ``env`` says otherwise)."""
    port = port or free_port()
    log = log_dir / f"{kind}-{port}.log"
    command = [sys.executable, "-m", "splitinfer", kind, "--host", "127.0.0.1", "--port", str(port), *args]
    process = spawn(command, log=log, env={"SPLITINFER_THREADS": "1", **(env or {})})
    return Service(kind, port, process, log, list(args))


def wait_until(service: Service, path: str = "/readyz", timeout_s: float = 120, status: int = 200) -> httpx.Response:
    """:func:`wait_ready` for a :class:`Service`, with its output in the error."""
    try:
        return wait_ready(service.url + path, timeout_s, [service.process], status)
    except (RuntimeError, TimeoutError) as exc:
        raise type(exc)(f"{service.name}{path}: {exc}\n{service.output()}") from exc
