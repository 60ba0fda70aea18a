"""Passive link estimation: uplink bandwidth and round-trip time from the edge's own cloud calls.

Each call to the cloud gives three numbers: the bytes uploaded, the round trip the edge measured, and
the cloud's own account of its time (``Server-Timing``): ``recv``, how long the request body took to
arrive after its headers, and ``total``, the whole handling time including ``recv``. Then::

    rtt       ~= round_trip - total          (propagation both ways: what no computation explains)
    recv      ~= offset + bytes * 8 / bandwidth

The bandwidth is the slope of a weighted least-squares line through recent ``(bytes, recv)`` samples,
not a plain ratio: a link's first bytes often arrive faster than its rate (a token bucket's burst, a
body read together with its headers), which makes ``recv`` too short by about the same time for every
payload. A ratio would then overrate the link, the more so the smaller the payloads; the slope does
not. With payloads of one size only, the line is pinned through the origin by a light prior, and the
slope is the ratio again.

Bandwidth samples come only from bodies large enough for their transfer time to be measurable
(``min_sample_bytes``). Samples are weighted as an exponential moving average would weigh them: each
new one at least ``smoothing``, and more the longer it came after the one before
(``1 - exp(-gap / time_constant_s)``), so that a sample after a long silence, such as a probe, is the
only news and nearly replaces the estimate. The RTT is smoothed the same way.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LinkEstimate", "LinkEstimator"]

# NOTE: the prior's weight, as a fraction of the samples' weight: enough to fix the line when every
# sample has the same size, too little to bias a line that the samples determine.
_ORIGIN_PRIOR = 0.005
# The fitted slope stays within this factor of the plain ratio (a noisy fit never runs away).
_MAX_SLOPE_FACTOR = 2.0


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


@dataclass(frozen=True)
class _Transfer:
    at: float
    bytes: int
    seconds: float


class LinkEstimator:
    """Smoothed estimates, starting from an assumed link until real transfers are observed."""

    def __init__(
        self,
        *,
        bandwidth_bps: float,
        rtt_s: float,
        smoothing: float = 0.2,
        time_constant_s: float = 5.0,
        min_sample_bytes: int = 32 * 1024,
        min_recv_s: float = 0.0005,
        window: int = 32,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < smoothing <= 1:
            raise ValueError(f"smoothing must be in (0, 1], not {smoothing}")
        if bandwidth_bps <= 0:
            raise ValueError(f"the assumed bandwidth must be positive, not {bandwidth_bps}")
        self.smoothing, self.time_constant_s, self.clock = smoothing, time_constant_s, clock
        self.min_sample_bytes = min_sample_bytes
        self.min_recv_s = min_recv_s
        self._rtt_at = clock()
        self._rtt_s = rtt_s
        self._bandwidth_bps = bandwidth_bps
        self._transfers: deque[_Transfer] = deque(maxlen=window)
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
            self._transfers.append(_Transfer(now, sent_bytes, cloud_recv_s))
            self.bandwidth_samples += 1
            self._bandwidth_bps = self._fit()

    def _weight(self, gap_s: float) -> float:
        return max(self.smoothing, 1 - math.exp(-max(gap_s, 0.0) / self.time_constant_s))

    def _weights(self) -> list[float]:
        """Each sample's weight in an exponential moving average over the window, oldest first."""
        transfers = list(self._transfers)
        weights = [0.0] * len(transfers)
        remaining = 1.0
        for i in range(len(transfers) - 1, -1, -1):
            a = 1.0 if i == 0 else self._weight(transfers[i].at - transfers[i - 1].at)
            weights[i] = remaining * a
            remaining *= 1 - a
        return weights

    def _fit(self) -> float:
        """Bandwidth from the slope of the weighted line through the samples (and lightly the origin)."""
        weights = self._weights()
        xs = [float(t.bytes) for t in self._transfers]
        ys = [t.seconds for t in self._transfers]
        total = sum(weights)
        ratio = sum(w * y for w, y in zip(weights, ys, strict=True)) / sum(
            w * x for w, x in zip(weights, xs, strict=True)
        )
        prior = _ORIGIN_PRIOR * total
        mass = total + prior  # the prior is a point at (0, 0)
        mean_x = sum(w * x for w, x in zip(weights, xs, strict=True)) / mass
        mean_y = sum(w * y for w, y in zip(weights, ys, strict=True)) / mass
        sxx = prior * mean_x**2 + sum(w * (x - mean_x) ** 2 for w, x in zip(weights, xs, strict=True))
        sxy = prior * mean_x * mean_y + sum(
            w * (x - mean_x) * (y - mean_y) for w, x, y in zip(weights, xs, ys, strict=True)
        )
        slope = sxy / sxx if sxx > 0 else ratio
        slope = min(max(slope, ratio / _MAX_SLOPE_FACTOR), ratio * _MAX_SLOPE_FACTOR)
        return 8 / slope

    @property
    def estimate(self) -> LinkEstimate:
        return LinkEstimate(self._bandwidth_bps, self._rtt_s, self.bandwidth_samples, self.rtt_samples)
