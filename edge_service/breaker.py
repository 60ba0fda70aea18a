"""A circuit breaker for the edge's calls to the cloud: a dead cloud costs one fast failure, not a timeout each.

Every call goes through :meth:`CircuitBreaker.call`, an async context manager whose exit records the call's
outcome whatever it was (success, a failure, a refusal that proves the cloud is up, cancellation, an error
nobody expected), so no path can leave the breaker half-open with its probe slot taken for ever.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import TracebackType
from typing import Literal

from shared.errors import BadGateway, CloudTimeout, CloudUnavailable, PayloadRefused, SplitInferError

__all__ = ["CircuitBreaker"]

State = Literal["closed", "open", "half-open"]

_CLOUD_FAILURES = (CloudUnavailable, CloudTimeout, BadGateway, TimeoutError)


class _Call:
    """One call through the breaker (see :meth:`CircuitBreaker.call`)."""

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker

    async def __aenter__(self) -> None:
        self._breaker.before_call()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        breaker = self._breaker
        if exc is None or isinstance(exc, PayloadRefused):
            # NOTE: a cloud that refuses the payload (as another model's, too large, malformed) is up: each
            # request says why at once, rather than the open circuit's "failed N times"
            breaker.record_success()
        elif isinstance(exc, _CLOUD_FAILURES):
            breaker.record_failure()
        elif isinstance(exc, SplitInferError):
            breaker.record_success()  # the cloud is up; it refused this payload
        elif isinstance(exc, asyncio.CancelledError):
            breaker.record_abandoned()
        else:
            breaker.record_failure()  # an error nobody expected says nothing good about the cloud


class CircuitBreaker:
    """Opens after ``failures`` consecutive failures; after ``reset_s`` lets one probe through (half-open).

    A successful probe closes it; a probe that fails, or ends any other way (cancelled, an unexpected
    error), opens it again for ``reset_s``. Use from one event loop (not thread-safe).
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

    @property
    def retry_in_s(self) -> float:
        """Seconds until the next probe may go through (0 when closed or half-open)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self.reset_s - (self._clock() - self._opened_at))

    def call(self) -> _Call:
        """``async with breaker.call(): ...``: refused at once (:class:`CloudUnavailable`) when the circuit is
        open; otherwise the block's outcome is recorded when it exits, however it exits."""
        return _Call(self)

    def before_call(self) -> None:
        """Raise :class:`CloudUnavailable` at once when the circuit does not let this call through."""
        state = self.state
        if state == "closed":
            return
        if state == "half-open" and not self._probing:
            self._probing = True
            return
        remaining = self.retry_in_s if state == "open" else self.reset_s
        what = "a probe is in flight" if state == "half-open" else f"next try in {remaining:.1f} s"
        raise CloudUnavailable(
            f"the cloud failed {self._consecutive} times in a row; circuit open, {what}",
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

    def record_abandoned(self) -> None:
        """The call was cancelled before its outcome was known: a probe re-opens the circuit (the next probe
        goes after ``reset_s``); an ordinary call leaves the count as it was."""
        if self._probing:
            self._opened_at = self._clock()
        self._probing = False
