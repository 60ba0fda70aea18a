"""Thread counts that do not oversubscribe a host shared by several services or worker processes."""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["THREADS_ENV", "available_cores", "share_of_cores", "pair_threads_env"]

THREADS_ENV = "SPLITINFER_THREADS"


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and ``taskset`` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # NOTE: not on macOS or Windows
        return os.cpu_count() or 1


def share_of_cores(processes: int, cores: int | None = None) -> int:
    """torch threads for each of ``processes`` busy processes on ``cores`` cores (at least one each)."""
    if processes < 1:
        raise ValueError("processes must be >= 1")
    return max(1, (cores if cores is not None else available_cores()) // processes)


def pair_threads_env(environ: Mapping[str, str]) -> dict[str, str]:
    """What edge and cloud sharing this host get for torch threads: half the cores each, unless
    ``SPLITINFER_THREADS`` is set (then it applies, unchanged, to both)."""
    return {} if THREADS_ENV in environ else {THREADS_ENV: str(share_of_cores(2))}
