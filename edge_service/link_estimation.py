"""Passive link estimation: uplink bandwidth and round-trip time from the edge's own cloud calls.

Each call to the cloud gives three numbers: the bytes uploaded, the round trip the edge measured, and
the cloud's own account of its time (``Server-Timing``): ``recv``, how long the request body took to
arrive after its headers, and ``total``, the whole handling time including ``recv``. Then::

    rtt       ~= round_trip - total          (propagation both ways: what no computation explains)
    bandwidth ~= bytes * 8 / recv            (the body streaming in at the link's rate)

Where the cloud reports it (``stream``), the caller passes as ``sent_bytes`` and ``cloud_recv_s`` only
the part of the body after its first chunk and its arrival time (why: :class:`service_core.http.BodyArrival`).

Bandwidth samples come only from bodies large enough for their transfer time to be measurable
(``min_sample_bytes``); both quantities are smoothed (exponentially weighted; bandwidth as the ratio of
smoothed bytes to smoothed seconds, so that big transfers weigh more). A sample weighs at least
``smoothing``, and more the older the estimate it updates (``1 - exp(-age / time_constant_s)``): a
sample after a long silence, such as a probe, is the only news and nearly replaces the estimate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LinkEstimate", "LinkEstimator"]


@dataclass(frozen=True)
class LinkEstimate:
    bandwidth_bps: float
    rtt_s: float
    bandwidth_samples: int
    rtt_samples: int

    def to_json(self) -> dict[str, float | int]:
        return {
            "bandwidth_bps": round(self.bandwidth_bps),
            "rtt_ms": round(self.rtt_s * 1000, 3),
            "bandwidth_samples": self.bandwidth_samples,
            "rtt_samples": self.rtt_samples,
        }


class LinkEstimator:
    """Smoothed estimates, starting from an assumed link until real transfers are observed."""

    def __init__(
        self,
        *,
        bandwidth_bps: float,
        rtt_s: float,
        smoothing: float = 0.3,
        time_constant_s: float = 5.0,
        min_sample_bytes: int = 32 * 1024,
        min_recv_s: float = 0.0005,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < smoothing <= 1:
            raise ValueError(f"smoothing must be in (0, 1], not {smoothing}")
        self.smoothing, self.time_constant_s, self.clock = smoothing, time_constant_s, clock
        self._rtt_at = self._bandwidth_at = clock()
        self.min_sample_bytes = min_sample_bytes
        self.min_recv_s = min_recv_s
        self._bytes = bandwidth_bps / 8  # smoothed bytes per sample, seeded as one second's worth
        self._seconds = 1.0
        self._rtt_s = rtt_s
        self.bandwidth_samples = 0
        self.rtt_samples = 0

    def observe(self, *, sent_bytes: int, round_trip_s: float, cloud_total_s: float, cloud_recv_s: float) -> None:
        """Fold in one cloud call; calls whose timing is inconsistent are ignored."""
        if round_trip_s <= 0 or cloud_total_s < 0 or cloud_recv_s < 0 or cloud_total_s > round_trip_s:
            return
        now = self.clock()
        a = 1.0 if self.rtt_samples == 0 else self._weight(now - self._rtt_at)
        self._rtt_s = (1 - a) * self._rtt_s + a * (round_trip_s - cloud_total_s)
        self._rtt_at = now
        self.rtt_samples += 1
        if sent_bytes >= self.min_sample_bytes and cloud_recv_s >= self.min_recv_s:
            a = 1.0 if self.bandwidth_samples == 0 else self._weight(now - self._bandwidth_at)
            self._bytes = (1 - a) * self._bytes + a * sent_bytes
            self._seconds = (1 - a) * self._seconds + a * cloud_recv_s
            self._bandwidth_at = now
            self.bandwidth_samples += 1

    def _weight(self, age_s: float) -> float:
        return max(self.smoothing, 1 - math.exp(-max(age_s, 0.0) / self.time_constant_s))

    @property
    def estimate(self) -> LinkEstimate:
        return LinkEstimate(self._bytes * 8 / self._seconds, self._rtt_s, self.bandwidth_samples, self.rtt_samples)
