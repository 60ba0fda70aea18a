"""The passive link estimator recovers bandwidth and RTT from the timings real cloud calls report."""

from __future__ import annotations

import pytest

from edge_service.link_estimation import LinkEstimator


def _call(estimator: LinkEstimator, sent: int, bandwidth_bps: float, rtt_s: float, work_s: float = 0.004) -> None:
    recv = sent * 8 / bandwidth_bps
    estimator.observe(
        sent_bytes=sent, round_trip_s=rtt_s + recv + work_s, cloud_total_s=recv + work_s, cloud_recv_s=recv
    )


def test_starts_from_the_assumed_link() -> None:
    estimate = LinkEstimator(bandwidth_bps=20e6, rtt_s=0.03).estimate
    assert estimate.bandwidth_bps == pytest.approx(20e6) and estimate.rtt_s == pytest.approx(0.03)
    assert (estimate.bandwidth_samples, estimate.rtt_samples) == (0, 0)


def test_converges_on_the_measured_link() -> None:
    """Noisy samples around 5 Mbit/s and 50 ms: the estimate settles near their middle, not on the last one."""
    estimator = LinkEstimator(bandwidth_bps=1e9, rtt_s=0.001)
    for i in range(40):
        _call(estimator, 200_000, (4e6, 6e6)[i % 2], (0.04, 0.06)[i % 2])
    estimate = estimator.estimate
    assert estimate.bandwidth_bps == pytest.approx(5e6, rel=0.12)  # the last sample was 6 Mbit/s
    assert estimate.rtt_s == pytest.approx(0.05, rel=0.12)
    assert estimate.bandwidth_samples == estimate.rtt_samples == 40


def test_small_payloads_teach_the_rtt_but_not_the_bandwidth() -> None:
    estimator = LinkEstimator(bandwidth_bps=50e6, rtt_s=0.02)
    for _ in range(5):
        _call(estimator, 4_000, 1e6, 0.1)
    estimate = estimator.estimate
    assert estimate.bandwidth_bps == pytest.approx(50e6) and estimate.bandwidth_samples == 0
    assert estimate.rtt_s == pytest.approx(0.1) and estimate.rtt_samples == 5


def test_smoothing_follows_a_change_without_jumping() -> None:
    estimator = LinkEstimator(bandwidth_bps=1e6, rtt_s=0.01, smoothing=0.3)
    for _ in range(10):
        _call(estimator, 100_000, 50e6, 0.01)
    _call(estimator, 100_000, 5e6, 0.01)
    once = estimator.estimate.bandwidth_bps
    assert 5e6 < once < 50e6 / 2  # one slow transfer moves the estimate a lot, but not all the way
    for _ in range(15):
        _call(estimator, 100_000, 5e6, 0.01)
    assert estimator.estimate.bandwidth_bps == pytest.approx(5e6, rel=0.02)


def test_inconsistent_timings_are_ignored() -> None:
    estimator = LinkEstimator(bandwidth_bps=20e6, rtt_s=0.03)
    estimator.observe(sent_bytes=100_000, round_trip_s=0.01, cloud_total_s=0.02, cloud_recv_s=0.01)  # total > trip
    estimator.observe(sent_bytes=100_000, round_trip_s=0.0, cloud_total_s=0.0, cloud_recv_s=0.0)
    assert estimator.estimate.rtt_samples == 0


def test_smoothing_must_be_a_fraction() -> None:
    with pytest.raises(ValueError, match="smoothing"):
        LinkEstimator(bandwidth_bps=1e6, rtt_s=0.01, smoothing=0)


def test_a_sample_after_a_long_silence_nearly_replaces_the_estimate() -> None:
    now = [0.0]
    estimator = LinkEstimator(bandwidth_bps=1e6, rtt_s=0.01, smoothing=0.3, time_constant_s=5.0, clock=lambda: now[0])
    for _ in range(10):
        now[0] += 0.1
        _call(estimator, 100_000, 5e6, 0.05)
    now[0] += 15  # e.g. a probe: the only news in 15 s
    _call(estimator, 100_000, 50e6, 0.02)
    estimate = estimator.estimate
    assert estimate.bandwidth_bps > 30e6  # most of the way to the new 50 Mbit/s (smoothing alone: 7 Mbit/s)
    assert estimate.rtt_s == pytest.approx(0.02, abs=0.002)
