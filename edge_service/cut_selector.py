"""``--cut auto`` while serving: estimate the link from real requests, re-plan, switch cut with hysteresis.

The selector starts from the planner's choice for the configured link. Every cloud call feeds the
:class:`~shared.link_estimation.LinkEstimator`, and every request's measured compute calibrates the
profiles (a running service takes longer than its profile: its own HTTP work competes for the CPU).
Every ``replan_interval_s`` the plan is recomputed for the estimated link and the calibrated compute,
and the edge moves to the best (cut, codec) only when it is predicted at least ``switch_margin``
faster than the current one and the current one has been in use for ``min_dwell_s`` (no flapping
between two nearly equal cuts).

While the current cut sends nothing the estimate can learn from (``output``, or a payload too small to
time), one request every ``probe_interval_s`` goes through the best cut that does, so a link that gets
faster is noticed too. That request is answered normally; it is only routed differently.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from edge_service.runtime import EdgeModel, Route
from shared.link_estimation import LinkEstimate, LinkEstimator
from shared.planning import PlanRow, Profile, plan

__all__ = ["CutSelector", "SelectorSettings"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SelectorSettings:
    bandwidth_bps: float
    rtt_s: float
    max_logit_error: float
    replan_interval_s: float = 2.0
    switch_margin: float = 0.05
    min_dwell_s: float = 5.0
    probe_interval_s: float = 10.0
    calibrate: bool = True


def _initial_plan(edge: Profile, cloud: Profile, settings: SelectorSettings) -> list[PlanRow]:
    rows = plan(
        edge,
        cloud,
        bandwidth_bps=settings.bandwidth_bps,
        rtt_s=settings.rtt_s,
        max_logit_error=settings.max_logit_error,
    )
    if not rows:
        raise ValueError("the profiles have no cut in common; profile both sides with the same options")
    return rows


class _Overhead:
    """How much longer than profiled one side's compute takes in service (smoothed; 0 until measured).

    Additive rather than a ratio: what a service adds to its profile (thread hand-offs, its own HTTP
    work competing for the CPU) is about the same for every cut, however long the cut's compute.
    """

    def __init__(self, smoothing: float = 0.2) -> None:
        self.value_ms, self.samples, self.smoothing = 0.0, 0, smoothing

    def observe(self, measured_ms: float, profiled_ms: float) -> None:
        if measured_ms <= 0:
            return
        a = 1.0 if self.samples == 0 else self.smoothing
        self.value_ms = (1 - a) * self.value_ms + a * (measured_ms - profiled_ms)
        self.samples += 1


class _SelectorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.bandwidth = Gauge(
            "splitinfer_link_bandwidth_bits_per_second", "Estimated uplink bandwidth to the cloud.", registry=registry
        )
        self.rtt = Gauge("splitinfer_link_rtt_seconds", "Estimated round-trip time to the cloud.", registry=registry)
        self.predicted = Gauge(
            "splitinfer_predicted_latency_seconds",
            "The planner's predicted latency of the current cut on the estimated link.",
            registry=registry,
        )
        self.overhead = Gauge(
            "splitinfer_planner_overhead_seconds",
            "Measured minus profiled compute per request, by side: what each side adds to its profile in service.",
            ["side"],
            registry=registry,
        )
        self.switches = Counter("splitinfer_cut_switches", "Times cut auto moved to another cut.", registry=registry)
        self.probes = Counter(
            "splitinfer_link_probes", "Requests routed through another cut to measure the link.", registry=registry
        )


def _key(row: PlanRow) -> tuple[str, str]:
    return row.cut, row.codec


class CutSelector:
    """Chooses the edge's route for cut ``auto`` (from construction on). Runs on the event loop; every
    method is quick."""

    def __init__(
        self,
        model: EdgeModel,
        edge: Profile,
        cloud: Profile,
        settings: SelectorSettings,
        *,
        codec_for: Callable[[str], str],
        registry: CollectorRegistry,
        on_switch: Callable[[Route], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model, self.edge, self.cloud, self.settings = model, edge, cloud, settings
        self.codec_for, self.on_switch, self.clock = codec_for, on_switch, clock
        self.estimator = LinkEstimator(bandwidth_bps=settings.bandwidth_bps, rtt_s=settings.rtt_s, clock=clock)
        self.registry = registry
        self.metrics = _SelectorMetrics(registry)
        self.rows = _initial_plan(edge, cloud, settings)
        self.current = self.rows[0]
        self.model.route = self.route_for(self.current)
        # The profiles' own compute per route (link-independent), to compare real requests with.
        self._profiled = {_key(row): row for row in plan(edge, cloud, bandwidth_bps=1e9, rtt_s=0.0)}
        self.edge_overhead, self.cloud_overhead = _Overhead(), _Overhead()
        now = clock()
        self.last_plan_at = self.last_switch_at = self.last_sample_at = now
        self.switch_count = 0
        self.history: list[dict[str, Any]] = []
        self._publish()

    def route_for(self, row: PlanRow) -> Route:
        return self.model.route_for(row.cut, row.codec if row.codec != "-" else self.codec_for(row.cut))

    def route_for_request(self) -> Route:
        """The current route, or now and then a probe route when the current one cannot measure the link."""
        now = self.clock()
        interval = self.settings.probe_interval_s
        if interval <= 0 or self._measures_bandwidth(self.current) or now - self.last_sample_at < interval:
            return self.model.route
        probe = next((row for row in self.rows if self._measures_bandwidth(row)), None)
        if probe is None:
            return self.model.route
        self.last_sample_at = now  # one probe per interval, even while it is in flight
        self.metrics.probes.inc()
        return self.route_for(probe)

    def _measures_bandwidth(self, row: PlanRow) -> bool:
        return row.cut != "output" and row.bytes_per_image >= self.estimator.min_sample_bytes

    def observe(self, sent_bytes: int, round_trip_ms: float, server_timing: dict[str, float]) -> None:
        """Fold in one cloud call (a cloud that does not report ``recv`` and ``total`` teaches nothing)."""
        if "total" not in server_timing or "recv" not in server_timing:
            return
        before = self.estimator.bandwidth_samples
        self.estimator.observe(
            sent_bytes=sent_bytes,
            round_trip_s=round_trip_ms / 1000,
            cloud_total_s=server_timing["total"] / 1000,
            cloud_recv_s=server_timing["recv"] / 1000,
        )
        if self.estimator.bandwidth_samples > before:
            self.last_sample_at = self.clock()
        self.maybe_replan()

    def observe_compute(self, route: Route, timings_ms: dict[str, float], server_timing: dict[str, float]) -> None:
        """Compare one request's measured compute on each side with what the profiles predicted."""
        if not self.settings.calibrate:
            return
        key = (route.cut.name, "-" if route.runs_everything else route.codec)
        profiled = self._profiled.get(key)
        if profiled is None:
            return
        edge_ms = sum(timings_ms.get(k, 0.0) for k in ("decode", "preprocess", "head", "encode"))
        self.edge_overhead.observe(edge_ms, profiled.edge_ms)
        if "decode" in server_timing and "tail" in server_timing:
            self.cloud_overhead.observe(server_timing["decode"] + server_timing["tail"], profiled.cloud_ms)

    def maybe_replan(self) -> bool:
        """Re-plan for the estimated link if it is time; switch when clearly better. True if it switched."""
        now = self.clock()
        if self.settings.replan_interval_s <= 0 or now - self.last_plan_at < self.settings.replan_interval_s:
            return False
        self.last_plan_at = now
        link = self.estimator.estimate
        self.rows = plan(
            self.edge,
            self.cloud,
            bandwidth_bps=link.bandwidth_bps,
            rtt_s=link.rtt_s,
            max_logit_error=self.settings.max_logit_error,
            edge_overhead_ms=self.edge_overhead.value_ms,
            cloud_overhead_ms=self.cloud_overhead.value_ms,
        )
        by_key = {_key(row): row for row in self.rows}
        self.current = by_key.get(_key(self.current), self.current)
        best = self.rows[0]
        switched = False
        clearly_better = best.latency_ms <= self.current.latency_ms * (1 - self.settings.switch_margin)
        dwelt = now - self.last_switch_at >= self.settings.min_dwell_s
        if _key(best) != _key(self.current) and clearly_better and dwelt:
            self._switch(best, link, now)
            switched = True
        self._publish()
        return switched

    def _switch(self, best: PlanRow, link: LinkEstimate, now: float) -> None:
        previous = self.current
        route = self.route_for(best)
        self.model.route = route
        self.current, self.last_switch_at = best, now
        self.switch_count += 1
        self.metrics.switches.inc()
        event = {
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "from": f"{previous.cut}/{previous.codec}",
            "to": f"{best.cut}/{best.codec}",
            "predicted_ms": {"from": round(previous.latency_ms, 1), "to": round(best.latency_ms, 1)},
            "link": link.to_json(),
        }
        self.history = [*self.history[-9:], event]
        logger.info(
            "cut auto: %s -> %s (predicted %.1f -> %.1f ms; link %.1f Mbit/s, RTT %.1f ms)",
            event["from"],
            event["to"],
            previous.latency_ms,
            best.latency_ms,
            link.bandwidth_bps / 1e6,
            link.rtt_s * 1000,
        )
        if self.on_switch is not None:
            self.on_switch(route)

    def _publish(self) -> None:
        link = self.estimator.estimate
        self.metrics.bandwidth.set(link.bandwidth_bps)
        self.metrics.rtt.set(link.rtt_s)
        self.metrics.predicted.set(self.current.latency_ms / 1000)
        self.metrics.overhead.labels("edge").set(self.edge_overhead.value_ms / 1000)
        self.metrics.overhead.labels("cloud").set(self.cloud_overhead.value_ms / 1000)

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": "auto",
            "adaptive": self.settings.replan_interval_s > 0,
            "assumed_link": {"bandwidth_bps": self.settings.bandwidth_bps, "rtt_ms": self.settings.rtt_s * 1000},
            "estimated_link": self.estimator.estimate.to_json(),
            "calibration": {
                "edge_overhead_ms": round(self.edge_overhead.value_ms, 3),
                "cloud_overhead_ms": round(self.cloud_overhead.value_ms, 3),
                "samples": self.edge_overhead.samples,
            },
            "predicted_latency_ms": round(self.current.latency_ms, 3),
            "candidates": len(self.rows),
            "ranking": [
                {"cut": r.cut, "codec": r.codec, "predicted_latency_ms": round(r.latency_ms, 3)} for r in self.rows[:5]
            ],
            "switches": self.switch_count,
            "recent_switches": self.history,
        }
