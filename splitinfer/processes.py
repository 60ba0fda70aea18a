"""Service processes on free loopback ports (tests and benchmarks), each in its own process group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

__all__ = ["Service", "free_port", "peak_rss_kib", "rss_kib", "start_service", "stop_in_order", "wait_until"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
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


def rss_kib(pid: int) -> int:
    """Resident memory of a process (Linux), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def peak_rss_kib(pid: int) -> int:
    """Peak resident memory of a process so far (Linux ``VmHWM``), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for process {pid}")


def stop_in_order(processes: Sequence[subprocess.Popen[bytes]], timeout_s: float = 60) -> None:
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
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SPLITINFER_THREADS": "1", **(env or {})}
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return Service(kind, port, process, log, list(args))


def wait_until(service: Service, path: str = "/readyz", timeout_s: float = 120, status: int = 200) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    last: httpx.Response | None = None
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(f"{service.name} exited with {service.process.returncode}:\n{service.output()}")
        try:
            last = httpx.get(service.url + path, timeout=5)
            if last.status_code == status:
                return last
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise TimeoutError(
        f"{service.name}{path} never answered {status} (last: {last and last.text}):\n{service.output()}"
    )
