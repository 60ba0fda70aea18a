"""The metrics of several processes serving one port (``splitinfer cloud --workers N``), added up on every scrape.

With ``SO_REUSEPORT`` a scrape of ``/metrics`` reaches whichever worker the kernel picks. Each worker
answering with its own counters would make every series jump between the workers' values, and
Prometheus reads each drop as a counter reset. In prometheus_client's multiprocess mode every process
keeps its values in memory-mapped files in one directory (``PROMETHEUS_MULTIPROC_DIR``, read when
prometheus_client is first imported), and a scrape adds up all of them (:func:`collect`).

The supervisor (:mod:`splitinfer.workers`) makes the directory, starts every worker with it, and
:func:`retire` s a dead worker's files: its counters and histograms are added into one file per kind
(``counter_retired.db``, ``histogram_retired.db``), so the totals never drop and the directory holds a
bounded number of files however often workers are replaced; its gauges go (a gauge describes a live
process). A scrape holds a shared lock on the directory while it reads, :func:`retire` an exclusive one,
so no scrape counts a dead worker twice or misses it.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, mmap_dict, multiprocess, values

__all__ = ["MULTIPROCESS_DIR_ENV", "collect", "multiprocess_dir", "retire"]

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LOCK_FILE = ".lock"
_ADDED_UP = frozenset({"counter", "histogram", "summary"})
# NOTE: prometheus_client's multiprocess half has no type hints
_MmapedDict: Any = mmap_dict.MmapedDict
_MultiProcessCollector: Any = multiprocess.MultiProcessCollector


def multiprocess_dir() -> Path | None:
    """The directory this process's metric values are kept in, or None when they are in its memory (the
    variable was not set when prometheus_client was imported)."""
    directory = os.environ.get(MULTIPROCESS_DIR_ENV)
    if not directory or values.ValueClass is values.MutexValue:
        return None
    return Path(directory)


@contextmanager
def _locked(directory: Path, operation: int) -> Iterator[None]:
    fd = os.open(directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, operation)
        yield
    finally:
        os.close(fd)  # NOTE: closing the descriptor releases the lock


def collect(directory: Path) -> bytes:
    """The Prometheus text of every process's metrics in ``directory``, added up."""
    registry = CollectorRegistry()
    _MultiProcessCollector(registry, path=str(directory))
    with _locked(directory, fcntl.LOCK_SH):
        return generate_latest(registry)


def retire(directory: Path, pid: int) -> None:
    """Fold the files of process ``pid`` (dead) into the retired totals: counters and histograms are added
    into ``<kind>_retired.db``, gauges are dropped."""
    with _locked(directory, fcntl.LOCK_EX):
        for path in sorted(directory.glob(f"*_{pid}.db")):
            kind = path.name.split("_", 1)[0]
            if kind in _ADDED_UP:
                _add_into(directory / f"{kind}_retired.db", path)
            path.unlink()


def _add_into(target: Path, source: Path) -> None:
    totals = _MmapedDict(str(target))
    try:
        for key, value, timestamp, _ in _MmapedDict.read_all_values_from_file(str(source)):
            current, _ = totals.read_value(key)
            totals.write_value(key, current + value, timestamp)
    finally:
        totals.close()
