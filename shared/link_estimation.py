"""Passive link estimation: uplink bandwidth and round-trip time from the edge's own cloud calls.

Each call to the cloud gives three numbers: the bytes uploaded, the round trip the edge measured, and
the cloud's own account of its time (``Server-Timing``): ``recv``, how long the request body took to
arrive after its headers, and ``total``, the whole handling time including ``recv``. Then::

    rtt       ~= round_trip - total          (propagation both ways: what no computation explains)
    bandwidth ~= bytes * 8 / recv            (the body streaming in at the link's rate)

Bandwidth samples come only from bodies large enough for their transfer time to be measurable
(``min_sample_bytes``); both quantities are smoothed (exponentially weighted; bandwidth as the ratio of
smoothed bytes to smoothed seconds, so that big transfers weigh more).
"""

from __future__ import annotations

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
        min_sample_bytes: int = 32 * 1024,
        min_recv_s: float = 0.0005,
    ) -> None:
        if not 0 < smoothing <= 1:
            raise ValueError(f"smoothing must be in (0, 1], not {smoothing}")
        self.smoothing = smoothing
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
        a = self.smoothing
        rtt = round_trip_s - cloud_total_s
        self._rtt_s = rtt if self.rtt_samples == 0 else (1 - a) * self._rtt_s + a * rtt
        self.rtt_samples += 1
        if sent_bytes >= self.min_sample_bytes and cloud_recv_s >= self.min_recv_s:
            if self.bandwidth_samples == 0:
                self._bytes, self._seconds = float(sent_bytes), cloud_recv_s
            else:
                self._bytes = (1 - a) * self._bytes + a * sent_bytes
                self._seconds = (1 - a) * self._seconds + a * cloud_recv_s
            self.bandwidth_samples += 1

    @property
    def estimate(self) -> LinkEstimate:
        return LinkEstimate(self._bytes * 8 / self._seconds, self._rtt_s, self.bandwidth_samples, self.rtt_samples)
