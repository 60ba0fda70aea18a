"""Running one service in this process with uvicorn, and both of them as child processes (``up``)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

import httpx
import uvicorn

from service_core.settings import ServiceSettings
from splitinfer.threads import THREADS_ENV, share_of_cores

__all__ = ["configure_logging", "run_service", "start_pair", "stop_processes", "wait_ready"]

logger = logging.getLogger("splitinfer")


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    # NOTE: httpx logs every request at INFO; our own access log already has one line per request.
    logging.getLogger("httpx").setLevel(logging.WARNING)


class _DrainingServer(uvicorn.Server):
    """On the first SIGTERM/SIGINT: /readyz turns 503 for ``drain_s``, then uvicorn stops accepting and
    finishes the requests in flight. A second signal stops at once."""

    def __init__(self, config: uvicorn.Config, drain_s: float) -> None:
        super().__init__(config)
        self.drain_s = drain_s
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        app_state = getattr(self.config.app, "state", None)
        if self._draining or self.drain_s <= 0 or app_state is None:
            if app_state is not None:
                app_state.draining = True
            super().handle_exit(sig, frame)
            return
        self._draining = True
        app_state.draining = True
        logger.info("draining: /readyz answers 503 for %.1f s, then in-flight requests finish", self.drain_s)
        timer = threading.Timer(self.drain_s, super().handle_exit, (sig, frame))
        timer.daemon = True
        timer.start()


def run_service(
    app: Any, settings: ServiceSettings, sockets: list[socket.socket] | None = None, **uvicorn_options: Any
) -> None:
    """Serve ``app`` with uvicorn on the settings' address, or on ``sockets`` already bound (workers)."""
    configure_logging(settings.log_level)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
        ssl_certfile=str(settings.ssl_certfile) if settings.ssl_certfile else None,
        ssl_keyfile=str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
        **uvicorn_options,
    )
    _DrainingServer(config, settings.drain_s).run(sockets=sockets)


def wait_ready(url: str, deadline_s: float, processes: Sequence[subprocess.Popen[bytes]] = ()) -> None:
    """Poll ``url`` until it answers 200, a process dies, or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"a service exited with status {process.returncode} before {url} was ready")
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:300]}"
        except httpx.TransportError as exc:
            last = str(exc)
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready after {deadline_s:.0f} s: {last}")


def start_pair(
    common: Sequence[str], cloud_args: Sequence[str], edge_args: Sequence[str], env: dict[str, str] | None = None
) -> list[subprocess.Popen[bytes]]:
    """Start ``splitinfer cloud`` and ``splitinfer edge`` as children, each in its own process group.

    Unless ``SPLITINFER_THREADS`` is set, each gets half the host's cores for torch: two services that
    each take every core fight over them (a head on 2 cores ran slower than the whole model alone).
    """
    launch = [sys.executable, "-m", "splitinfer"]
    environment = {**os.environ, **(env or {})}
    environment.setdefault(THREADS_ENV, str(share_of_cores(2)))
    cloud = subprocess.Popen([*launch, "cloud", *common, *cloud_args], env=environment, start_new_session=True)
    edge = subprocess.Popen([*launch, "edge", *common, *edge_args], env=environment, start_new_session=True)
    return [cloud, edge]


def stop_processes(processes: Sequence[subprocess.Popen[bytes]], timeout_s: float = 30) -> None:
    """SIGTERM (a graceful drain), then SIGKILL whatever is still running after ``timeout_s``."""
    for process in reversed(processes):
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
