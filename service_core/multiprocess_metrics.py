"""The metrics of several processes serving one port (``splitinfer cloud --workers N``), added up on every scrape.

With ``SO_REUSEPORT`` a scrape of ``/metrics`` reaches whichever worker the kernel picks. Each worker
answering with its own counters would make every series jump between the workers' values, and
Prometheus reads each drop as a counter reset. In prometheus_client's multiprocess mode every process
keeps its values in memory-mapped files in one directory (``PROMETHEUS_MULTIPROC_DIR``, read when
prometheus_client is first imported), and a scrape adds up all of them (:func:`collect`).

The supervisor (:mod:`splitinfer.workers`) makes the directory, starts every worker with it, and
:class:`Retirements` folds a dead worker's files: its counters and histograms are added into one file per kind
(``counter_retired.db``, ``histogram_retired.db``), so the totals never drop and the directory holds a
bounded number of files however often workers are replaced; its gauges go (a gauge describes a live
process). A scrape holds a shared lock on the directory while it reads, a retirement an exclusive one, so
no scrape counts a dead worker twice or misses it. Neither side waits for the other for long: a retirement
that finds scrapes reading is tried again later (the supervisor must keep supervising), and a scrape that
finds a retirement going on for a second answers 503.
"""

from __future__ import annotations

import fcntl
import glob
import logging
import os
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, mmap_dict, multiprocess, values

from shared.errors import ServiceUnavailable

__all__ = ["MULTIPROCESS_DIR_ENV", "Retirements", "collect", "multiprocess_dir", "retire_dead_processes"]

logger = logging.getLogger(__name__)

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LOCK_FILE = ".lock"
_ADDED_UP = frozenset({"counter", "histogram", "summary"})
_COLLECT_WAIT_S = 1.0
_COLLECT_POLL_S = 0.005
# NOTE: prometheus_client's multiprocess half has no type hints
_MmapedDict: Any = mmap_dict.MmapedDict
_MultiProcessCollector: Any = multiprocess.MultiProcessCollector


def multiprocess_dir() -> Path | None:
    """The directory this process's metric values are kept in, or None when they are in its memory (the
    variable was not set when prometheus_client was imported). ``ValueError`` when it is not a folder this
    process can write to."""
    directory = os.environ.get(MULTIPROCESS_DIR_ENV)
    if not directory or values.ValueClass is values.MutexValue:
        return None
    path = Path(directory)
    # NOTE: checked here, before the first metric opens its file there: that failed with "no such file or
    # folder: DIR/histogram_<pid>.db", naming neither the variable nor the fix
    if not path.is_dir():
        raise ValueError(
            f"{MULTIPROCESS_DIR_ENV}={directory!r} is not a folder: make it (empty) before starting the service, "
            "or unset the variable to keep the metrics in the process"
        )
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{MULTIPROCESS_DIR_ENV}={directory!r} is not a folder uid {os.getuid()} can write to")
    return path


@contextmanager
def _locked(directory: Path, operation: int) -> Iterator[None]:
    """Hold ``operation`` (LOCK_SH or LOCK_EX, with LOCK_NB: BlockingIOError while another holds it)."""
    fd = os.open(directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, operation)
        yield
    finally:
        os.close(fd)  # NOTE: closing the descriptor releases the lock


def collect(directory: Path, wait_s: float = _COLLECT_WAIT_S) -> bytes:
    """The Prometheus text of every process's metrics in ``directory``, added up. Blocks while a dead process's
    files are being retired (milliseconds), at most ``wait_s``: then :class:`ServiceUnavailable` (a retiring
    process that is itself stopped must not hang every scrape)."""
    registry = CollectorRegistry()
    _SkippingCollector(registry, path=str(directory))
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with _locked(directory, fcntl.LOCK_SH | fcntl.LOCK_NB):
                return generate_latest(registry)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise ServiceUnavailable(
                    "the workers' metrics are being updated; retry shortly", retry_after=1
                ) from None
            time.sleep(_COLLECT_POLL_S)


class _SkippingCollector(_MultiProcessCollector):  # type: ignore[misc]
    """prometheus_client's collector, which fails the whole scrape on one file it cannot read (a file of a live
    process damaged or put there, which no retirement removes: every scrape was a 500): such files are left
    out, each named in a warning."""

    def collect(self) -> Any:
        files = sorted(glob.glob(os.path.join(self._path, "*.db")))
        try:
            return self.merge(files, accumulate=True)
        except Exception:  # NOTE: whatever one file makes it raise; each is tried alone below
            return self.merge([path for path in files if _mergeable(path)], accumulate=True)


def _mergeable(path: str) -> bool:
    try:
        _MultiProcessCollector.merge([path], accumulate=True)
    except Exception as exc:  # NOTE: any failure of the file alone leaves it out
        logger.warning("left %s out of the metrics: not a metrics file that can be read (%s)", path, exc)
        return False
    return True


class Retirements:
    """Dead processes whose files are folded into the retired totals: counters and histograms are added into
    ``<kind>_retired.db``, gauges are dropped. Never waits: while scrapes hold the lock, the pids wait for the
    next :meth:`retry` (their files are still counted meanwhile, each once)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.pending: set[int] = set()

    def retire(self, pid: int) -> None:
        self.pending.add(pid)
        self.retry()

    def retry(self) -> None:
        if not self.pending:
            return
        try:
            with _locked(self.directory, fcntl.LOCK_EX | fcntl.LOCK_NB):
                for pid in sorted(self.pending):
                    _fold(self.directory, pid)
        except BlockingIOError:
            return
        except OSError as exc:  # NOTE: a full disk: the files stay, still counted, only not compacted
            logger.warning("cannot retire the metric files of processes %s: %s", sorted(self.pending), exc)
        self.pending.clear()


def retire_dead_processes(directory: Path) -> list[int]:
    """Retire (:class:`Retirements`) the files of processes that are no longer running: a run killed outright
    (SIGKILL, the OOM killer) left them, and their gauges (``splitinfer_info`` of another cut) would be
    reported next to this process's for ever. A process still running, or a pid reused since, is left alone.
    The pids retired (none while scrapes hold the lock: they are counted once each meanwhile)."""
    _drop_damaged_totals(directory)
    dead = sorted({pid for path in directory.glob("*_*.db") if (pid := _pid_of(path)) is not None and _gone(pid)})
    if dead:
        retirements = Retirements(directory)
        for pid in dead:
            retirements.pending.add(pid)
        retirements.retry()
        if retirements.pending:
            return []
        logger.warning(
            "%s held the metric files of %d processes no longer running (pids %s): their counters and histograms "
            "are kept in the retired totals, their gauges dropped",
            directory,
            len(dead),
            ", ".join(map(str, dead[:10])),
        )
    return dead


def _drop_damaged_totals(directory: Path) -> None:
    """Drop a retired-totals file that cannot be read (with a warning): every scrape failed on it (500)."""
    try:
        with _locked(directory, fcntl.LOCK_EX | fcntl.LOCK_NB):
            for path in sorted(directory.glob("*_retired.db")):
                if _entries(path) is None:
                    path.unlink()
    except (BlockingIOError, OSError):  # NOTE: scrapes reading (then it was read), or a folder not ours
        return


def _pid_of(path: Path) -> int | None:
    suffix = path.stem.rsplit("_", 1)[1]
    return int(suffix) if suffix.isascii() and suffix.isdigit() else None


def _gone(pid: int) -> bool:
    if pid == os.getpid() or pid == 0:  # NOTE: kill(0) signals this process's group: no process is 0
        return pid == 0
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # NOTE: OverflowError: a name no process can have
        return True
    except PermissionError:  # NOTE: another user's process: running
        return False
    return False


_UNREADABLE = (struct.error, ValueError, RuntimeError)
"""What prometheus_client raises reading a damaged file: ValueError for an empty file or a key not UTF-8,
RuntimeError for a header that says it holds more than the file does ("read beyond file size")."""


def _entries(path: Path) -> list[tuple[str, float, float, int]] | None:
    """Every value of the metrics file ``path``, read whole (a file cut short gives none rather than a part),
    or None, with a warning, when it cannot be read."""
    try:
        return list(_MmapedDict.read_all_values_from_file(str(path)))
    except _UNREADABLE as exc:
        logger.warning("dropped %s: not a metrics file that can be read (%s)", path, exc)
        return None


def _fold(directory: Path, pid: int) -> None:
    for path in sorted(directory.glob(f"*_{pid}.db")):
        kind = path.name.split("_", 1)[0]
        if kind in _ADDED_UP and (entries := _entries(path)) is not None:
            target = directory / f"{kind}_retired.db"
            if target.exists() and _entries(target) is None:
                target.unlink()  # NOTE: every scrape would fail on it (its totals cannot be read anyway)
            _add_into(target, entries)
        path.unlink()


def _add_into(target: Path, entries: list[tuple[str, float, float, int]]) -> None:
    totals = _MmapedDict(str(target))
    try:
        for key, value, timestamp, _ in entries:
            current, _ = totals.read_value(key)
            totals.write_value(key, current + value, timestamp)
    finally:
        totals.close()
