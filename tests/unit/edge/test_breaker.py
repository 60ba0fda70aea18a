from __future__ import annotations

import pytest

from edge_service.breaker import CircuitBreaker
from shared.errors import CloudUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_and_fails_fast() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=3, reset_s=5.0, clock=clock)
    for _ in range(2):
        breaker.before_call()
        breaker.record_failure()
    assert breaker.state == "closed"
    breaker.before_call()
    breaker.record_failure()
    assert breaker.state == "open"
    with pytest.raises(CloudUnavailable, match="circuit open") as refused:
        breaker.before_call()
    assert refused.value.retry_after == 5.0


def test_half_open_lets_one_probe_through_and_recovers() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=1, reset_s=2.0, clock=clock)
    breaker.record_failure()
    clock.now += 2.0
    assert breaker.state == "half-open"
    breaker.before_call()  # the probe
    with pytest.raises(CloudUnavailable):
        breaker.before_call()  # everyone else still fails fast
    breaker.record_success()
    assert breaker.state == "closed"
    breaker.before_call()


def test_a_failed_probe_opens_it_again() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=2, reset_s=1.0, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    clock.now += 1.5
    breaker.before_call()
    breaker.record_failure()
    assert breaker.state == "open"


def test_successes_reset_the_count() -> None:
    breaker = CircuitBreaker(failures=2, reset_s=1.0, clock=Clock())
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state == "closed"
