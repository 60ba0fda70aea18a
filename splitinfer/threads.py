"""Thread counts that do not oversubscribe a host shared by several services or worker processes."""

from __future__ import annotations

from collections.abc import Mapping

from shared.cores import available_cores

__all__ = [
    "PAIR_SPIN_COUNT",
    "SPIN_COUNT_ENV",
    "THREADS_ENV",
    "WAIT_POLICY_ENV",
    "available_cores",
    "pair_threads_env",
    "share_of_cores",
]

THREADS_ENV = "SPLITINFER_THREADS"


def share_of_cores(processes: int, cores: int | None = None) -> int:
    """torch threads for each of ``processes`` busy processes on ``cores`` cores (at least one each)."""
    if processes < 1:
        raise ValueError("processes must be >= 1")
    return max(1, (cores if cores is not None else available_cores()) // processes)


WAIT_POLICY_ENV = "OMP_WAIT_POLICY"
SPIN_COUNT_ENV = "GOMP_SPINCOUNT"
PAIR_SPIN_COUNT = "10000"
"""Spins of an idle OpenMP thread before it sleeps, for edge and cloud sharing a host: long enough to bridge
the microseconds between one model's parallel regions, short enough (a fraction of a millisecond) to hand
the core to the other service soon after a head or a tail ends."""


def pair_threads_env(environ: Mapping[str, str]) -> dict[str, str]:
    """What edge and cloud sharing this host get: every core each for torch, and OpenMP threads that spin
    briefly when idle (``GOMP_SPINCOUNT=10000``), then sleep instead of holding the cores the other needs.

    One request's head and tail never run at the same time, so each gets the whole machine; under load
    both compute at once and share it. Measured on 2 cores (bench/openmp_teams.py, docs/benchmarks.md
    "Per-request overhead"): at concurrency 1 resnet18 split at ``layer3`` answered in 52.6 ms with the
    short spin, 67.4 ms with idle threads that sleep at once (``OMP_WAIT_POLICY=PASSIVE``: every parallel
    region then waits for a wake-up) and 54.8 ms with GNU OpenMP's default spin, which held a core through
    the other service's work.
    ``SPLITINFER_THREADS``, ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` in the environment apply unchanged."""
    env = {} if THREADS_ENV in environ else {THREADS_ENV: str(available_cores())}
    if WAIT_POLICY_ENV in environ or SPIN_COUNT_ENV in environ:
        return env
    return {**env, SPIN_COUNT_ENV: PAIR_SPIN_COUNT}
