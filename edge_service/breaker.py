"""A circuit breaker for the edge's calls to the cloud: a dead cloud costs one fast failure, not a timeout each."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

from shared.errors import CloudUnavailable

__all__ = ["CircuitBreaker"]

State = Literal["closed", "open", "half-open"]


class CircuitBreaker:
    """Opens after ``failures`` consecutive failures; after ``reset_s`` lets one probe through (half-open).

    A successful probe closes it; a failed one opens it again. Use from one event loop (not thread-safe).
    """

    def __init__(self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if failures < 1 or reset_s < 0:
            raise ValueError("failures must be >= 1 and reset_s >= 0")
        self.failures = failures
        self.reset_s = reset_s
        self._clock = clock
        self._consecutive = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> State:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.reset_s:
            return "half-open"
        return "open"

    def before_call(self) -> None:
        """Raise :class:`CloudUnavailable` at once when the circuit does not let this call through."""
        state = self.state
        if state == "closed":
            return
        if state == "half-open" and not self._probing:
            self._probing = True
            return
        opened_at = self._opened_at if self._opened_at is not None else self._clock()
        remaining = max(0.0, self.reset_s - (self._clock() - opened_at))
        raise CloudUnavailable(
            f"the cloud failed {self._consecutive} times in a row; circuit open, next try in {remaining:.1f} s",
            retry_after=max(remaining, 1.0),
        )

    def record_success(self) -> None:
        self._consecutive = 0
        self._opened_at = None
        self._probing = False

    def record_failure(self) -> None:
        self._consecutive += 1
        if self._probing or self._consecutive >= self.failures:
            self._opened_at = self._clock()
        self._probing = False
