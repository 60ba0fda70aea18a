"""Several cloud processes on one port (``splitinfer cloud --workers N``), each with its own model.

Every worker listens on its own socket bound to the same address with ``SO_REUSEPORT``: the kernel
spreads new connections over the workers, so no process hands requests to another. The parent holds
the port (bound, not listening) while the workers start, forwards SIGTERM/SIGINT to them (each drains
as a single cloud does) and exits when they have. Each worker gets ``cores // N`` torch threads unless
``threads`` is set. With a GPU, every worker loads the model onto the same device: their kernels
share it (NVIDIA MPS lets them run concurrently rather than time-sliced).

Settings travel to the workers as JSON on their stdin (the token included: never on a command line).
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import time
from types import FrameType

from cloud_service.settings import CloudSettings
from splitinfer.threads import share_of_cores

__all__ = ["reuse_port_socket", "run_workers", "worker_main"]

logger = logging.getLogger("splitinfer")
_WORKER_ENTRY = "from splitinfer.workers import worker_main; worker_main()"


def reuse_port_socket(host: str, port: int, *, listen: bool = True) -> socket.socket:
    """A TCP socket bound to ``host:port`` with ``SO_REUSEPORT`` (Linux, BSD), listening unless told not to."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("--workers needs SO_REUSEPORT (Linux or BSD); run one process per port instead")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(2048)
    sock.set_inheritable(False)
    return sock


def _worker_settings(settings: CloudSettings, port: int) -> str:
    data = settings.model_dump(mode="json")
    data.update(workers=1, port=port, threads=settings.threads or share_of_cores(settings.workers))
    if settings.token is not None:
        data["token"] = settings.token.get_secret_value()
    return json.dumps(data)


def run_workers(settings: CloudSettings) -> int:
    """Start ``settings.workers`` cloud processes on one port and supervise them; the exit status."""
    from splitinfer.serve import configure_logging

    configure_logging(settings.log_level)
    holder = reuse_port_socket(settings.host, settings.port, listen=False)
    port = int(holder.getsockname()[1])
    payload = _worker_settings(settings, port).encode()
    workers: list[subprocess.Popen[bytes]] = []
    stopping = False

    def forward(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for _ in range(settings.workers):
            worker = subprocess.Popen([sys.executable, "-c", _WORKER_ENTRY], stdin=subprocess.PIPE)
            if worker.stdin is not None:  # NOTE: always, with stdin=PIPE
                worker.stdin.write(payload)
                worker.stdin.close()
            workers.append(worker)
        logger.info("cloud: %d workers on %s:%d (pids %s)", len(workers), settings.host, port, [w.pid for w in workers])
        while any(w.poll() is None for w in workers):
            if not stopping and any(w.poll() not in (None, 0) for w in workers):
                logger.error("a cloud worker exited with status %s: stopping the others", [w.poll() for w in workers])
                forward(signal.SIGTERM, None)
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        holder.close()
    statuses = [w.returncode for w in workers]
    return 0 if stopping or all(code == 0 for code in statuses) else 1


def worker_main() -> None:
    """One worker: settings from stdin, its own ``SO_REUSEPORT`` socket, the ordinary cloud app."""
    from cloud_service.app import create_app
    from splitinfer.serve import run_service

    settings = CloudSettings(**json.loads(sys.stdin.read()))
    sock = reuse_port_socket(settings.host, settings.port)
    run_service(create_app(settings), settings, sockets=[sock])
