"""Several cloud processes on one port (``splitinfer cloud --workers N``), each with its own model.

Every worker listens on its own socket bound to the same address with ``SO_REUSEPORT``: the kernel
spreads new connections over the workers, so no process hands requests to another. A worker starts
listening once its model has loaded, so connections never wait in the backlog of a worker that is still
loading. The parent holds the port (bound, not listening) while the workers start and restart, forwards
SIGTERM/SIGINT to them (each drains as a single cloud does) and exits 0 when they have. Every worker runs
in a process group of its own, so Ctrl-C in a terminal (SIGINT to the foreground process group) reaches
the parent alone and each worker gets the one signal the parent forwards: a worker that got the
terminal's SIGINT as well would take the second for "stop at once" and cut its requests in flight. (Ctrl-Z
stops the parent alone too; the workers keep serving.) Each worker gets
``cores // N`` torch threads unless ``threads`` is set. With a GPU, every worker loads the model onto the
same device: their kernels share it (NVIDIA MPS lets them run concurrently rather than time-sliced).

The parent supervises its workers:

- A worker tells the parent it is ready by writing one byte to a pipe from its lifespan, after the model
  has loaded, and then one byte every :data:`HEARTBEAT_S` from its event loop. A ready worker silent for
  :data:`SILENT_S` (stopped with SIGSTOP, its event loop blocked, a deadlock) is killed, and so replaced: the
  connections the kernel gives it would otherwise wait forever.
- A ready worker that dies (a non-zero status or a signal: the OOM killer, a crash in a native library)
  while the service is not stopping is replaced by a fresh worker on the same port with the same
  settings; the others keep serving meanwhile. Replacements back off: 0.5 s, doubling up to 10 s for a
  worker that lived less than a minute, 0.5 s again after one that lived longer.
- A worker that is not ready :attr:`CloudSettings.worker_load_timeout_s` after it started (a model load
  stuck on a network filesystem, a deadlock in a native library, SIGSTOP while loading) is sent SIGTERM,
  then SIGKILL :data:`KILL_GRACE_S` later, and is then handled as a worker that died while loading (below),
  whatever its exit status. The deadline holds while the parent is stopping too, so a hung worker cannot
  keep the parent from exiting.
- A worker that dies before any worker was ready (weights that do not load, a bad setting: its
  replacement would fail the same way) ends the service: the parent stops the others and exits 1. Once
  some worker has loaded with these settings, a worker that dies while loading (the OOM killer picks a
  worker at its memory peak, and N models load at once at start-up) is replaced in turn, backing off,
  and the others keep serving. A replacement that cannot even be started (fork's ENOMEM) is tried again
  after the same backoff.
- A worker that exits with status 0 or on SIGTERM/SIGINT was stopped on purpose and is not replaced.
- Once the parent is stopping, nothing is replaced.
- On Linux a worker gets SIGTERM when the parent dies (``PR_SET_PDEATHSIG``), so a parent killed outright
  leaves no orphan serving the port. The parent itself needs a supervisor (systemd, compose, Kubernetes).

The workers keep their metric values in one directory the parent makes (and removes): whichever worker a
scrape of ``/metrics`` reaches answers with every worker's counts, a dead worker's folded into the retired
totals (:mod:`service_core.multiprocess_metrics`).

Settings travel to the workers as JSON on their stdin (the token included: never on a command line).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from cloud_service.settings import CloudSettings
from service_core.multiprocess_metrics import MULTIPROCESS_DIR_ENV, Retirements
from splitinfer.checks import refuse_a_bound_port
from splitinfer.failures import exit_reason
from splitinfer.threads import share_of_cores

__all__ = ["HEARTBEAT_S", "KILL_GRACE_S", "SILENT_S", "backoff_s", "reuse_port_socket", "run_workers", "worker_main"]

logger = logging.getLogger("splitinfer")
_WORKER_ENTRY = "from splitinfer.workers import worker_main; worker_main()"
_POLL_S = 0.2
_METRICS_PREFIX = "splitinfer-metrics-"
_FIRST_BACKOFF_S = 0.5
_MAX_BACKOFF_S = 10.0
_STABLE_S = 60.0  # NOTE: a worker that lived this long resets its slot's backoff
_PR_SET_PDEATHSIG = 1  # NOTE: from <linux/prctl.h>
_STOPPED_ON_PURPOSE = frozenset({0, -signal.SIGTERM, -signal.SIGINT})
HEARTBEAT_S = 1.0
"""A ready worker writes a byte to its pipe this often, from its event loop."""
SILENT_S = 30.0
"""A ready worker whose pipe stays silent this long is hung (stopped, or its event loop blocked): it is
killed, and so replaced."""
KILL_GRACE_S = 5.0
"""A worker past its loading deadline gets SIGTERM, then SIGKILL this long after."""
_DEFAULT_LOAD_TIMEOUT_S: float = CloudSettings.model_fields["worker_load_timeout_s"].default
_LOAD_TIMEOUT_SETTING = "--worker-load-timeout-s, SPLITINFER_WORKER_LOAD_TIMEOUT_S"


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


def backoff_s(quick_deaths: int) -> float:
    """Seconds before a dead worker is replaced, after ``quick_deaths`` earlier short-lived ones in its slot."""
    return min(_FIRST_BACKOFF_S * 2.0 ** min(quick_deaths, 16), _MAX_BACKOFF_S)


def _worker_settings(settings: CloudSettings, port: int) -> dict[str, Any]:
    data = settings.model_dump(mode="json")
    data.update(workers=1, port=port, threads=settings.threads or share_of_cores(settings.workers))
    if settings.token is not None:
        data["token"] = settings.token.get_secret_value()
    return data


@dataclass
class _Worker:
    """One worker process and the read end of its pipe (None once the worker closed it, or it died)."""

    process: subprocess.Popen[bytes]
    ready_fd: int | None
    started: float
    ready: bool = False
    heard_at: float = 0.0
    """When the worker last wrote to its pipe."""
    overdue_at: float | None = None
    """When the parent sent SIGTERM to this worker for not being ready by the loading deadline."""
    killed: bool = False
    """SIGKILL has been sent (after the grace that followed ``overdue_at``)."""

    def read_ready(self, now: float | None = None) -> None:
        """Take what the worker wrote (its readiness byte, then heartbeats) without blocking; close the pipe
        at EOF (the worker ended its lifespan, or died)."""
        if self.ready_fd is None:
            return
        try:
            data = os.read(self.ready_fd, 4096)
        except BlockingIOError:
            return
        if not data:
            self.close()
            return
        self.heard_at = time.monotonic() if now is None else now
        if not self.ready:
            self.ready = True
            logger.info("cloud worker %d ready", self.process.pid)

    def silent_for(self, now: float) -> float:
        """How long a ready worker whose pipe is open has not written (0 otherwise)."""
        return now - self.heard_at if self.ready and self.ready_fd is not None else 0.0

    def loading_for(self, now: float) -> float:
        """How long a worker that is not ready yet has been running (0 once ready)."""
        return 0.0 if self.ready else now - self.started

    def close(self) -> None:
        if self.ready_fd is not None:
            os.close(self.ready_fd)
            self.ready_fd = None


def _spawn(settings: dict[str, Any], entry: str = _WORKER_ENTRY, env: Mapping[str, str] | None = None) -> _Worker:
    """Start ``python -c entry`` in a process group of its own (with ``env``, else this process's environment),
    with the settings, the readiness pipe's number and the parent's pid on stdin."""
    read_fd, write_fd = os.pipe()
    try:
        os.set_blocking(read_fd, False)
        # NOTE: a group of its own: a terminal's Ctrl-C goes to the foreground group, the parent's alone, and
        # the worker gets only the signal the parent forwards (two SIGINTs make uvicorn skip the drain).
        process = subprocess.Popen(
            [sys.executable, "-c", entry], stdin=subprocess.PIPE, pass_fds=[write_fd], process_group=0, env=env
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    worker = _Worker(process, read_fd, time.monotonic())
    message = {"settings": settings, "ready_fd": write_fd, "parent": os.getpid()}
    if process.stdin is not None:  # NOTE: always, with stdin=PIPE
        try:
            process.stdin.write(json.dumps(message).encode())
            process.stdin.close()
        except OSError:  # NOTE: the worker died already; the supervisor sees its status
            pass
    return worker


@dataclass
class _Slot:
    """A place for one worker: the one running (None while a replacement waits out its backoff)."""

    worker: _Worker | None
    quick_deaths: int = 0
    restart_at: float | None = None
    replaces: str = ""


class _Supervisor:
    """Keeps ``count`` workers running until stopped (see the module docstring for the rules)."""

    def __init__(
        self,
        settings: dict[str, Any],
        spawn: Callable[[dict[str, Any]], _Worker] = _spawn,
        silent_s: float = SILENT_S,
        load_timeout_s: float = _DEFAULT_LOAD_TIMEOUT_S,
        kill_grace_s: float = KILL_GRACE_S,
        metrics: Retirements | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        """Where every worker that has exited has its metric files retired."""
        self.spawn = spawn
        self.silent_s = silent_s
        self.load_timeout_s = load_timeout_s
        self.kill_grace_s = kill_grace_s
        self.slots: list[_Slot] = []
        self.stop_signal: int | None = None
        self.signals = 0
        self.forwarded = 0
        self.failure: str | None = None
        self.restarts = 0
        self.ever_ready = False
        """Some worker has loaded with these settings: a death while loading is then no startup mistake."""

    def start(self, count: int) -> None:
        for _ in range(count):
            self.slots.append(_Slot(self.spawn(self.settings)))

    def request_stop(self, signum: int, _: FrameType | None = None) -> None:
        """The signal handler: only records the signal; the loop forwards it (never in the middle of a spawn).
        A second signal is forwarded too (a worker stops at once at its second)."""
        self.stop_signal = signum
        self.signals += 1

    def workers(self) -> list[_Worker]:
        return [slot.worker for slot in self.slots if slot.worker is not None]

    def alive(self) -> list[_Worker]:
        return [worker for worker in self.workers() if worker.process.poll() is None]

    def run(self) -> int:
        """Supervise until every worker has exited; the exit status (1 after a worker that never got ready)."""
        while not self.step():
            pass
        return 0 if self.failure is None else 1

    def step(self) -> bool:
        """One round (at most ``_POLL_S`` of waiting): forward a stop, take readiness bytes, handle the dead
        and the replacements due; whether every worker has exited for good."""
        self._forward_stop()
        pending = [w.ready_fd for w in self.workers() if w.ready_fd is not None]
        if pending:
            select.select(pending, [], [], _POLL_S)
        else:
            time.sleep(_POLL_S)
        for worker in self.workers():
            worker.read_ready()
            self.ever_ready = self.ever_ready or worker.ready
        if self.metrics is not None:
            self.metrics.retry()  # NOTE: the dead whose files scrapes were reading
        now = time.monotonic()
        for slot in self.slots:
            self._check(slot, now)
        waiting = self.stop_signal is None and any(slot.restart_at is not None for slot in self.slots)
        return not self.alive() and not waiting

    def _forward_stop(self) -> None:
        if self.stop_signal is None or self.forwarded == self.signals:
            return
        self.forwarded = self.signals
        for worker in self.alive():
            worker.process.send_signal(self.stop_signal)

    def _check(self, slot: _Slot, now: float) -> None:
        worker = slot.worker
        if worker is not None and worker.process.poll() is None:
            self._enforce_load_deadline(worker, now)
        if worker is not None and self.stop_signal is None and worker.silent_for(now) > self.silent_s:
            logger.error(
                "cloud worker %d has been silent for %.0f s (stopped, or its event loop blocked): killing it",
                worker.process.pid,
                worker.silent_for(now),
            )
            worker.process.kill()
            worker.process.wait()
        if worker is not None and worker.process.poll() is not None:
            self._died(slot, worker, now)
        if slot.restart_at is None or (self.stop_signal is None and now < slot.restart_at):
            return
        slot.restart_at = None
        if self.stop_signal is None:
            # NOTE: a signal that lands during the spawn is forwarded to the new worker by the next round
            try:
                slot.worker = self.spawn(self.settings)
            except OSError as exc:  # NOTE: fork's ENOMEM or EAGAIN, EMFILE: likely right after an OOM kill
                delay = backoff_s(slot.quick_deaths)
                slot.quick_deaths += 1
                slot.restart_at = now + delay
                logger.error("cannot start a cloud worker (%s): trying again in %.1f s", exc, delay)
                return
            self.restarts += 1
            logger.warning(
                "cloud worker %d replaces worker %s (restart %d)", slot.worker.process.pid, slot.replaces, self.restarts
            )

    def _enforce_load_deadline(self, worker: _Worker, now: float) -> None:
        """SIGTERM to a live worker not ready by the deadline, SIGKILL after the grace (never blocking: a
        process in uninterruptible sleep dies when its system call returns, and the others need the loop)."""
        if worker.ready or worker.killed:
            return
        if worker.overdue_at is None:
            if worker.loading_for(now) <= self.load_timeout_s:
                return
            worker.overdue_at = now
            logger.error(
                "cloud worker %d is not ready after %.1f s, past the loading deadline of %g s (%s): stopping it",
                worker.process.pid,
                worker.loading_for(now),
                self.load_timeout_s,
                _LOAD_TIMEOUT_SETTING,
            )
            worker.process.terminate()
        elif now - worker.overdue_at >= self.kill_grace_s:
            worker.killed = True
            logger.error("cloud worker %d ignored SIGTERM for %g s: killing it", worker.process.pid, self.kill_grace_s)
            worker.process.kill()

    def _died(self, slot: _Slot, worker: _Worker, now: float) -> None:
        worker.read_ready()  # NOTE: a byte written just before the worker died still counts
        worker.close()
        slot.worker = None
        code = worker.process.returncode
        pid, how = worker.process.pid, exit_reason(code)
        if self.metrics is not None:
            self.metrics.retire(pid)
        if self.stop_signal is not None:
            return
        overdue = worker.overdue_at is not None
        if code in _STOPPED_ON_PURPOSE and not overdue:  # NOTE: the SIGTERM the deadline sent is no purpose
            logger.info("cloud worker %d stopped (%s): not replaced", pid, how)
            return
        if overdue:
            how = f"{how} past the loading deadline of {self.load_timeout_s:g} s"
        self.ever_ready = self.ever_ready or worker.ready
        if not self.ever_ready and overdue:
            self.failure = (
                f"cloud worker {pid} was not ready within the loading deadline of {self.load_timeout_s:g} s "
                f"({_LOAD_TIMEOUT_SETTING}) and no worker has been ready (a load stuck on a slow or hung "
                "filesystem, a deadlock; raise the setting if the model needs longer): stopping the cloud"
            )
            logger.error("%s", self.failure)
            self.request_stop(signal.SIGTERM)
            return
        if not self.ever_ready:
            cause = (
                "if the OOM killer sent it, give the machine more memory or run fewer workers"
                if code < 0
                else "its error is above"
            )
            self.failure = (
                f"cloud worker {pid} died ({how}) before any worker was ready ({cause}; a replacement would "
                "fail the same way): stopping the cloud"
            )
            logger.error("%s", self.failure)
            self.request_stop(signal.SIGTERM)
            return
        lived = now - worker.started
        if lived >= _STABLE_S:
            slot.quick_deaths = 0
        delay = backoff_s(slot.quick_deaths)
        slot.quick_deaths += 1
        slot.restart_at = now + delay
        slot.replaces = f"{pid} ({how})"
        when = "after" if worker.ready else "while loading its model,"
        logger.warning("cloud worker %d died (%s) %s %.1f s: replacing it in %.1f s", pid, how, when, lived, delay)

    def kill_all(self) -> None:
        """Last resort (the supervisor itself failed): kill what still runs and close the pipes."""
        for worker in self.workers():
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait()
            worker.close()


def run_workers(settings: CloudSettings) -> int:
    """Start ``settings.workers`` cloud processes on one port and supervise them; the exit status."""
    from splitinfer.serve import configure_logging, warn_of_a_lowered_connection_limit

    configure_logging(settings.log_level)
    warn_of_a_lowered_connection_limit(settings)  # NOTE: the workers get the value explicitly, and stay quiet
    _remove_orphaned_metrics()
    _refuse_a_taken_port(settings.host, settings.port)
    holder = reuse_port_socket(settings.host, settings.port, listen=False)
    # NOTE: every worker keeps its metric values in one directory, so that whichever worker a scrape reaches
    # answers with all of them added up (service_core.multiprocess_metrics)
    with holder, tempfile.TemporaryDirectory(prefix=f"{_METRICS_PREFIX}{os.getpid()}-") as metrics_dir:
        port = int(holder.getsockname()[1])
        supervisor = _Supervisor(
            _worker_settings(settings, port),
            spawn=functools.partial(_spawn, env=os.environ | {MULTIPROCESS_DIR_ENV: metrics_dir}),
            load_timeout_s=settings.worker_load_timeout_s,
            metrics=Retirements(Path(metrics_dir)),
        )
        previous = {sig: signal.signal(sig, supervisor.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            supervisor.start(settings.workers)
            pids = [w.process.pid for w in supervisor.workers()]
            logger.info("cloud: %d workers on %s:%d (pids %s)", len(pids), settings.host, port, pids)
            code = supervisor.run()
            logger.info("cloud: every worker has exited (%d restarts)", supervisor.restarts)
            return code
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            supervisor.kill_all()


def _refuse_a_taken_port(host: str, port: int) -> None:
    """Refuse a port something is bound to, as a single cloud would (a plain bind, ``SO_REUSEADDR`` only).

    ``SO_REUSEPORT`` alone would not: a second ``--workers`` cloud started on the port of a running one joined
    it, and the kernel spread the edges' connections over both (whatever model each serves); a port held
    without it was an ``OSError`` traceback.
    """
    if port != 0:
        refuse_a_bound_port(host, port, "another cloud?", "--port")


def _remove_orphaned_metrics() -> None:
    """Remove the metrics directories of parents that are gone (killed before they could remove their own)."""
    for directory in Path(tempfile.gettempdir()).glob(f"{_METRICS_PREFIX}*-*"):
        pid = directory.name.removeprefix(_METRICS_PREFIX).split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(directory, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # NOTE: another user's process
        return True
    return True


def _die_with_parent(parent: int) -> None:
    """Linux: SIGTERM to this worker when its parent dies, so a parent killed outright (SIGKILL) leaves no
    worker serving on the port."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # NOTE: the parent died before prctl
        os.kill(os.getpid(), signal.SIGTERM)


async def _heartbeat(fd: int) -> None:
    """The readiness byte, then one every :data:`HEARTBEAT_S` while the event loop runs."""
    while True:
        try:
            os.write(fd, b"1")
        except BlockingIOError:  # NOTE: the parent has not read for a while; it will find the pipe full
            pass
        except OSError:  # NOTE: the parent is gone; the worker serves until it is stopped
            return
        await asyncio.sleep(HEARTBEAT_S)


def worker_main() -> None:
    """One worker: settings from stdin, its own ``SO_REUSEPORT`` socket, the ordinary cloud app; one byte to
    the parent's pipe once the model has loaded."""
    from cloud_service.app import create_app
    from splitinfer.failures import explain
    from splitinfer.serve import run_service

    # NOTE: in a background process group (its own) a write to the terminal stops the worker when the
    # terminal has `stty tostop` set, unless SIGTTOU is ignored: the worker logs to the parent's stderr.
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    message = json.loads(sys.stdin.read())
    _die_with_parent(int(message["parent"]))
    ready_fd = int(message["ready_fd"])
    os.set_inheritable(ready_fd, False)  # NOTE: the worker's own children must not hold the parent's pipe open
    try:
        settings = CloudSettings(**message["settings"])
        # NOTE: bound now, listening only once the lifespan has run (uvicorn's server calls listen()): until
        # then the kernel sends every connection to the workers that are ready.
        sock = reuse_port_socket(settings.host, settings.port, listen=False)
        app = create_app(settings)
        inner = app.router.lifespan_context

        @asynccontextmanager
        async def lifespan(served: Any) -> AsyncIterator[Any]:
            async with inner(served) as state:
                os.set_blocking(ready_fd, False)
                beating = asyncio.create_task(_heartbeat(ready_fd))
                try:
                    yield state
                finally:
                    beating.cancel()
                    os.close(ready_fd)  # NOTE: EOF tells the parent the silence that follows is no hang

        app.router.lifespan_context = lifespan
        run_service(app, settings, sockets=[sock])
    except KeyboardInterrupt:  # NOTE: uvicorn raises the SIGINT it has drained on again: a stop, no traceback
        return
    except Exception as exc:
        text = explain(exc)
        if text is None:
            raise
        print(f"splitinfer: error: cloud worker {os.getpid()}: {text}", file=sys.stderr)
        raise SystemExit(1) from None
