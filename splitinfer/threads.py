"""Thread counts that do not oversubscribe a host shared by several services or worker processes."""

from __future__ import annotations

from collections.abc import Mapping

from shared.cores import available_cores

__all__ = ["THREADS_ENV", "WAIT_POLICY_ENV", "available_cores", "pair_threads_env", "share_of_cores"]

THREADS_ENV = "SPLITINFER_THREADS"


def share_of_cores(processes: int, cores: int | None = None) -> int:
    """torch threads for each of ``processes`` busy processes on ``cores`` cores (at least one each)."""
    if processes < 1:
        raise ValueError("processes must be >= 1")
    return max(1, (cores if cores is not None else available_cores()) // processes)


WAIT_POLICY_ENV = "OMP_WAIT_POLICY"


def pair_threads_env(environ: Mapping[str, str]) -> dict[str, str]:
    """What edge and cloud sharing this host get: every core each for torch, and OpenMP threads that sleep
    when idle (``OMP_WAIT_POLICY=PASSIVE``) instead of spinning on the cores the other service needs.

    One request's head and tail never run at the same time, so each gets the whole machine; under load
    both compute at once and share it. Measured on 2 cores (docs/benchmarks.md, "Per-request overhead"):
    at concurrency 1 every core each answered in 44 ms where half the cores each took 58 ms, and at
    concurrency 8 both served 22 requests/s. ``SPLITINFER_THREADS`` or ``OMP_WAIT_POLICY`` in the
    environment apply unchanged to both."""
    env = {} if THREADS_ENV in environ else {THREADS_ENV: str(available_cores())}
    return env if WAIT_POLICY_ENV in environ else {**env, WAIT_POLICY_ENV: "PASSIVE"}
