"""``--cut auto`` while serving: estimate the link from real requests, re-plan, switch cut with hysteresis.

The selector starts from the planner's choice for the configured link. Every cloud call feeds the
:class:`~edge_service.link_estimation.LinkEstimator`, and every request's measured compute calibrates the
profiles (a running service takes longer than its profile: its own HTTP work competes for the CPU).
Every ``replan_interval_s`` the plan is recomputed for the estimated link and the calibrated compute.

Predictions alone cannot tell apart cuts that are predicted within a few percent of each other (on a
slow link a dozen cuts of resnet18 are), so the selector also learns from the latency it measures.
Each request's end-to-end latency on the edge, minus what the plan predicted for its route, is that
route's *residual*; a route's *expected latency* is its prediction plus the median of its recent
residuals (shrunk toward the typical one, so that among many routes measured a few times each the
luckiest does not always win), or, for a route not yet measured, plus the typical residual of the
routes that were. Residuals expire after ``measurement_ttl_s``, and as soon as the route's prediction
has moved by more than 20% since they were measured (the link changed under them).
Routes expected within ``explore_margin`` of the best but not yet measured are *explored*: a request
now and then goes through one of them until it has ``explore_samples`` measurements (the best route of
each of the ``explore_routes`` best cuts, best first). Exploring is paid from a budget: every ordinary
request saves ``explore_budget`` of the current route's expected latency, and an exploration is sent when
the savings cover its expected extra latency over the current route (never two in a row). A route expected no slower
is explored every other request; one expected 11% slower, with the 2% default, one request in seven. As
measurements expire this repeats now and then; however many routes are near the best, exploring costs
at most ``explore_budget`` of the latency served, on expectation, beyond the near-ties.

The edge moves to the route with the best expected latency only when that is at least
``switch_margin`` better than the current one, by at least ``switch_sigmas`` standard errors of the
difference of their measured corrections (a few lucky requests do not move it), and the current one
has been in use for ``min_dwell_s`` (no flapping between two nearly equal cuts); to a route nobody has measured, only
after exploring it, unless it is better by more than ``explore_margin`` (a link that collapses is
left at once).

While the link teaches the estimate nothing (the current cut is ``output``, or its payloads are too
small to time), one request every ``probe_interval_s`` goes through the best cut whose payload is
large enough (larger after each probe that taught nothing), so a link that gets faster is noticed
too. Probes and explorations are answered normally; they are only routed differently.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from edge_service.link_estimation import LinkEstimate, LinkEstimator
from edge_service.route_policy import RouteChoice
from edge_service.runtime import EdgeModel, Route
from shared.planning import PlanRow, Profile, fidelity_guard, plan
from shared.tail_timings import TailTimings

__all__ = ["CutSelector", "SelectorSettings"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SelectorSettings:
    link_bandwidth: float
    """The assumed uplink rate, bits per second."""
    link_rtt: float
    """The assumed round-trip time, seconds."""
    max_logit_error: float
    replan_interval_s: float = 2.0
    switch_margin: float = 0.05
    min_dwell_s: float = 5.0
    probe_interval_s: float = 10.0
    calibrate_profiles: bool = True
    explore_margin: float = 0.15
    explore_routes: int = 3
    explore_samples: int = 5
    explore_budget: float = 0.02
    """At most this fraction of the expected latency of the requests served is spent on exploring routes
    expected to be slower (each exploration costs its expected latency minus the current route's)."""
    measurement_ttl_s: float = 60.0
    switch_sigmas: float = 2.0
    """Switch only when the measured advantage is also at least this many standard errors of the difference
    between the two routes' corrections: request latencies vary by 5-10% on a busy link, and a few lucky
    samples of a route must not move the edge off the profile's choice."""
    shrink_samples: int = 2
    """Each route's correction is shrunk toward the typical one as if by this many typical samples: among
    many routes measured a few times each, the luckiest would otherwise always look best."""
    max_drift: float = 0.2
    """A residual is trusted only while its route's prediction stays within this fraction of what it was
    when the residual was measured: after the link changes a lot, routes are measured again."""


def _initial_plan(edge: Profile, cloud: Profile, settings: SelectorSettings) -> list[PlanRow]:
    rows = plan(
        edge,
        cloud,
        bandwidth_bps=settings.link_bandwidth,
        rtt_s=settings.link_rtt,
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


Key = tuple[str, str | None]


class _Residuals:
    """Measured minus predicted latency of the routes requests took: the recent ones, per route."""

    def __init__(self, ttl_s: float, max_drift: float, memory: int = 15) -> None:
        self.ttl_s, self.max_drift, self.memory = ttl_s, max_drift, memory
        self._by_route: dict[Key, deque[tuple[float, float, float]]] = {}

    def add(self, key: Key, at: float, measured_ms: float, predicted_ms: float) -> None:
        route = self._by_route.setdefault(key, deque(maxlen=self.memory))
        route.append((at, measured_ms - predicted_ms, predicted_ms))

    def fresh(self, now: float, predicted_ms: dict[Key, float]) -> dict[Key, list[float]]:
        """Each route's residuals that are neither too old nor from a different link (``max_drift``)."""
        fresh = {}
        for key, samples in self._by_route.items():
            now_ms = predicted_ms.get(key)
            if now_ms is None:
                continue
            kept = [
                r
                for at, r, then_ms in samples
                if now - at <= self.ttl_s and abs(then_ms - now_ms) <= self.max_drift * now_ms
            ]
            if kept:
                fresh[key] = kept
        return fresh


@dataclass(frozen=True)
class _Learned:
    """What measurements say about the plan's predictions, at one moment."""

    corrections: dict[Key, float]  # for the routes measured often enough lately
    samples: dict[Key, int]
    typical: float  # for the others: the median of the measured routes' own (0 while none is)
    standard_errors: dict[Key, float]  # of each correction's median, from its samples' spread

    @classmethod
    def from_residuals(cls, fresh: dict[Key, list[float]], min_samples: int, shrink_samples: int) -> _Learned:
        medians = {key: statistics.median(r) for key, r in fresh.items() if len(r) >= min_samples}
        typical = statistics.median(medians.values()) if medians else 0.0
        corrections = {
            key: (len(fresh[key]) * median + shrink_samples * typical) / (len(fresh[key]) + shrink_samples)
            for key, median in medians.items()
        }
        errors = {key: _median_standard_error(fresh[key], median) for key, median in medians.items()}
        return cls(corrections, {key: len(r) for key, r in fresh.items()}, typical, errors)

    def known(self, key: Key) -> bool:
        return key in self.corrections

    def standard_error(self, row: PlanRow) -> float:
        """Of the route's expected latency (0 for a route not measured: its prediction stands)."""
        return self.standard_errors.get(_key(row), 0.0)

    def expected_ms(self, row: PlanRow) -> float:
        return row.latency_ms + self.corrections.get(_key(row), self.typical)

    def to_json(self) -> list[dict[str, Any]]:
        return [
            {"cut": key[0], "codec": key[1], "correction_ms": round(c, 3), "samples": self.samples[key]}
            for key, c in self.corrections.items()
        ]


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
        self.explorations = Counter(
            "splitinfer_route_explorations",
            "Requests routed through a near-best cut to measure its latency.",
            registry=registry,
        )


def _median_standard_error(samples: list[float], median: float) -> float:
    """The standard error of the median of ``samples``: 1.2533 sigma / sqrt(n) for normal samples, with
    sigma estimated robustly from the median absolute deviation (1.4826 MAD), so one outlier moves it little."""
    deviation = statistics.median(abs(x - median) for x in samples)
    return 1.2533 * 1.4826 * deviation / math.sqrt(len(samples))


def _best_of_each_cut(ranked: list[tuple[float, PlanRow]], limit: float) -> list[PlanRow]:
    """The best-ranked route of each cut expected within ``limit``, best first. Exploring only these keeps
    a cut's codecs from crowding out other cuts: with a dozen codecs a cut, the few routes nearest the best
    were often one cut's codecs (which the profile tells apart well: bytes and encode time), and a cut
    nearby that was better in fact (its compute mispredicted under load) was never measured."""
    best: dict[str, PlanRow] = {}
    for expected, row in ranked:
        if expected > limit:
            break
        best.setdefault(row.cut, row)
    return list(best.values())


def _key(row: PlanRow) -> Key:
    return row.cut, row.codec


class CutSelector:
    """The route policy of cut ``auto`` (see :mod:`edge_service.route_policy`). Runs on the event loop;
    every method is quick. Every moment it acts on comes from ``clock``."""

    def __init__(
        self,
        model: EdgeModel,
        edge: Profile,
        cloud: Profile,
        settings: SelectorSettings,
        *,
        codec_for: Callable[[str], str | None],
        registry: CollectorRegistry,
        on_switch: Callable[[Route], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model, self.edge, self.cloud, self.settings = model, edge, cloud, settings
        self.codec_for, self.on_switch, self.clock = codec_for, on_switch, clock
        self.estimator = LinkEstimator(bandwidth_bps=settings.link_bandwidth, rtt_s=settings.link_rtt, clock=clock)
        self.registry = registry
        self.metrics = _SelectorMetrics(registry)
        self.rows = _initial_plan(edge, cloud, settings)
        self._by_key = {_key(row): row for row in self.rows}
        self.current = self.rows[0]
        self._route = self.route_for(self.current)
        # The profiles' own compute per route (link-independent), to compare real requests with.
        self._profiled = {_key(row): row for row in plan(edge, cloud, bandwidth_bps=1e9, rtt_s=0.0)}
        self.edge_calibration, self.cloud_calibration = _Overhead(), _Overhead()
        self.residuals = _Residuals(settings.measurement_ttl_s, settings.max_drift)
        now = clock()
        self.planned_at = self.switched_at = self.link_learned_at = now
        """When the plan was last made, the route last switched, and a call last taught the link's rate."""
        self.probe_sent_at: float | None = None
        self._probe_bytes = 2.0 * self.estimator.min_sample_bytes
        self.exploring: PlanRow | None = None
        self._explorations_sent = 0
        self._since_exploration = 0
        self._exploration_cost_ms = 0.0
        """The expected latency of the route being explored minus the current route's (0 when lower)."""
        self._exploration_savings_ms = 0.0
        """The exploring budget saved up by ordinary requests (see ``explore_budget``)."""
        self._current_expected_ms = self.current.latency_ms
        self.switch_count = 0
        self.history: list[dict[str, Any]] = []
        self._choose_exploration(now)
        self._publish()

    @property
    def route(self) -> Route:
        return self._route

    def route_for(self, row: PlanRow) -> Route:
        return self.model.route_for(row.cut, row.codec if row.codec is not None else self.codec_for(row.cut))

    # ------------------------------------------------------------------ choosing (no side effects)

    def choose(self) -> RouteChoice:
        """The current route; now and then a probe (when the link taught the estimate nothing for an
        interval) or an exploration (a near-best route whose latency has not been measured lately)."""
        now = self.clock()
        if self._probe_due(now) and (probe := self._probe_row(self._next_probe_bytes())) is not None:
            return RouteChoice(self.route_for(probe), "probe")
        # NOTE: never two explorations in a row, no more than it takes to measure the route, and only when
        # the ordinary requests since the last one have saved up its expected cost.
        target = self.exploring
        if (
            target is not None
            and self._since_exploration >= 1
            and self._explorations_sent < self.settings.explore_samples
            and self._exploration_savings_ms >= self._exploration_cost_ms
        ):
            return RouteChoice(self.route_for(target), "explore")
        return RouteChoice(self._route)

    def _probe_due(self, now: float) -> bool:
        interval = self.settings.probe_interval_s
        last = max(self.link_learned_at, self.probe_sent_at or self.link_learned_at)
        return interval > 0 and now - last >= interval

    def _next_probe_bytes(self) -> float:
        """The payload size the next probe asks for: doubled after a probe that taught nothing (on a fast
        link a whole body can arrive in the cloud's first chunk), up to the largest payload there is."""
        taught_nothing = self.probe_sent_at is not None and self.link_learned_at < self.probe_sent_at
        return self._probe_bytes * 2 if taught_nothing else self._probe_bytes

    def _probe_row(self, min_bytes: float) -> PlanRow | None:
        """The best route whose payload is at least ``min_bytes`` (else the largest), if not the current one."""
        sending = [row for row in self.rows if row.codec is not None]
        if not sending:
            return None
        probe = next((row for row in sending if row.bytes_per_image >= min_bytes), None)
        if probe is None:
            probe = max(sending, key=lambda row: row.bytes_per_image)
        return None if _key(probe) == _key(self.current) else probe

    def dispatched(self, choice: RouteChoice) -> None:
        """Spend the probe or exploration budget ``choice`` used."""
        if choice.purpose == "probe":
            self._probe_bytes = self._next_probe_bytes()
            self.probe_sent_at = self.clock()
            self.metrics.probes.inc()
        elif choice.purpose == "explore":
            self._since_exploration = 0
            self._explorations_sent += 1
            self._exploration_savings_ms -= self._exploration_cost_ms
            self.metrics.explorations.inc()
        elif choice.purpose == "current":
            self._since_exploration += 1
            self._save_for_exploring()

    def _save_for_exploring(self) -> None:
        """Add one ordinary request's share (``explore_budget`` of the current route's expected latency, as
        of the last re-plan) to the exploring budget, kept to what the next exploration costs (savings made
        while nothing was to be explored do not pay for a burst later)."""
        share = self.settings.explore_budget * self._current_expected_ms
        cap = max(share, self._exploration_cost_ms) if self.exploring is not None else share
        self._exploration_savings_ms = min(self._exploration_savings_ms + share, cap)

    # ------------------------------------------------------------------ learning

    def observe_link(self, sent_bytes: int, round_trip_ms: float, timings: TailTimings) -> None:
        """Fold in one cloud call (a cloud that does not report ``recv`` and ``total`` teaches nothing).

        The rate is timed on the part of the body after its first chunk when the cloud reports it
        (``stream``), else on the whole body (``recv``)."""
        if timings.total_ms is None or timings.recv_ms is None:
            return
        before = self.estimator.bandwidth_samples
        if timings.stream_bytes is not None and timings.stream_ms is not None:
            timed_bytes, timed_ms = timings.stream_bytes, timings.stream_ms
        else:
            timed_bytes, timed_ms = sent_bytes, timings.recv_ms
        self.estimator.observe(
            sent_bytes=timed_bytes,
            round_trip_s=round_trip_ms / 1000,
            cloud_total_s=timings.total_ms / 1000,
            cloud_recv_s=timed_ms / 1000,
        )
        if self.estimator.bandwidth_samples > before:
            self.link_learned_at = self.clock()

    def observe_request(self, route: Route, timings_ms: dict[str, float], cloud: TailTimings) -> None:
        """Learn from one single-image request that completed where its route says: each side's compute
        against the profiles, and its end-to-end latency (``timings_ms["total"]``) against the plan."""
        key = (route.cut.name, route.codec)
        if self.settings.calibrate_profiles and (profiled := self._profiled.get(key)) is not None:
            edge_ms = sum(timings_ms.get(k, 0.0) for k in ("decode", "preprocess", "head", "encode"))
            self.edge_calibration.observe(edge_ms, profiled.edge_ms)
            if cloud.cloud_compute_ms is not None:
                self.cloud_calibration.observe(cloud.cloud_compute_ms, profiled.cloud_ms)
        predicted = self._by_key.get(key)
        if predicted is None or "total" not in timings_ms:
            return
        now = self.clock()
        self.residuals.add(key, now, timings_ms["total"], predicted.latency_ms)
        if self.exploring is not None and key == _key(self.exploring) and self.learned(now).known(key):
            self._choose_exploration(now)

    def learned(self, now: float | None = None) -> _Learned:
        """The per-route corrections that measured latencies make to the current plan."""
        now = self.clock() if now is None else now
        predicted = {key: row.latency_ms for key, row in self._by_key.items()}
        return _Learned.from_residuals(
            self.residuals.fresh(now, predicted), self.settings.explore_samples, self.settings.shrink_samples
        )

    def expected_ms(self, row: PlanRow, now: float | None = None) -> float:
        """The plan's prediction corrected by what was measured: the route's own residual, else the typical one."""
        return self.learned(now).expected_ms(row)

    def _ranked(self, learned: _Learned) -> list[tuple[float, PlanRow]]:
        return sorted(((learned.expected_ms(row), row) for row in self.rows), key=lambda pair: pair[0])

    def _choose_exploration(self, now: float, *, renew: bool = False) -> None:
        """The best-ranked route near the best that has not been measured lately, if any (``renew``: the
        same route may be sent another round of explorations, e.g. when some of the last round failed)."""
        chosen = None
        learned = self.learned(now)
        self._current_expected_ms = learned.expected_ms(self.current)
        if self.settings.explore_margin > 0:
            ranked = self._ranked(learned)
            limit = ranked[0][0] * (1 + self.settings.explore_margin)
            for row in _best_of_each_cut(ranked, limit)[: self.settings.explore_routes]:
                if _key(row) != _key(self.current) and not learned.known(_key(row)):
                    chosen = row
                    break
        if renew or chosen is None or self.exploring is None or _key(chosen) != _key(self.exploring):
            self._explorations_sent = 0
        self.exploring = chosen
        if chosen is not None:
            self._exploration_cost_ms = max(0.0, learned.expected_ms(chosen) - self._current_expected_ms)

    def replan(self) -> bool:
        """Re-plan for the estimated link if it is time; switch when clearly better. True if it switched."""
        now = self.clock()
        if self.settings.replan_interval_s <= 0 or now - self.planned_at < self.settings.replan_interval_s:
            return False
        self.planned_at = now
        link = self.estimator.estimate
        self.rows = plan(
            self.edge,
            self.cloud,
            bandwidth_bps=link.bandwidth_bps,
            rtt_s=link.rtt_s,
            max_logit_error=self.settings.max_logit_error,
            edge_calibration_ms=self.edge_calibration.value_ms,
            cloud_calibration_ms=self.cloud_calibration.value_ms,
        )
        self._by_key = {_key(row): row for row in self.rows}
        self.current = self._by_key.get(_key(self.current), self.current)
        learned = self.learned(now)
        best_ms, best = self._ranked(learned)[0]
        current_ms = learned.expected_ms(self.current)
        switched = False
        noise_ms = self.settings.switch_sigmas * math.hypot(
            learned.standard_error(best), learned.standard_error(self.current)
        )
        clearly_better = best_ms <= current_ms * (1 - self.settings.switch_margin) and current_ms - best_ms >= noise_ms
        dwelt = now - self.switched_at >= self.settings.min_dwell_s
        # An unmeasured route is explored first, unless it is better by more than exploring is for.
        vetted = (
            self.settings.explore_margin <= 0
            or learned.known(_key(best))
            or best_ms <= current_ms * (1 - self.settings.explore_margin)
        )
        if _key(best) != _key(self.current) and clearly_better and dwelt and vetted:
            self._switch(best, link, now, (current_ms, best_ms))
            switched = True
        self._choose_exploration(now, renew=self._explorations_sent >= self.settings.explore_samples)
        self._publish()
        return switched

    def _switch(self, best: PlanRow, link: LinkEstimate, now: float, expected_ms: tuple[float, float]) -> None:
        previous = self.current
        route = self.route_for(best)
        self._route = route
        self.current, self.switched_at = best, now
        self.switch_count += 1
        self.metrics.switches.inc()
        event = {
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "from": {"cut": previous.cut, "codec": previous.codec},
            "to": {"cut": best.cut, "codec": best.codec},
            "predicted_ms": {"from": round(previous.latency_ms, 1), "to": round(best.latency_ms, 1)},
            "expected_ms": {"from": round(expected_ms[0], 1), "to": round(expected_ms[1], 1)},
            "link": link.to_json(),
        }
        self.history = [*self.history[-9:], event]
        logger.info(
            "cut auto: %s/%s -> %s/%s (expected %.1f -> %.1f ms; link %.1f Mbit/s, RTT %.1f ms)",
            previous.cut,
            previous.codec,
            best.cut,
            best.codec,
            expected_ms[0],
            expected_ms[1],
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
        self.metrics.overhead.labels("edge").set(self.edge_calibration.value_ms / 1000)
        self.metrics.overhead.labels("cloud").set(self.cloud_calibration.value_ms / 1000)

    def to_json(self) -> dict[str, Any]:
        learned = self.learned()
        exploring = self.exploring
        return {
            "mode": "auto",
            "adaptive": self.settings.replan_interval_s > 0,
            "assumed_link": {"bandwidth_bps": self.settings.link_bandwidth, "rtt_ms": self.settings.link_rtt * 1000},
            "estimated_link": self.estimator.estimate.to_json(),
            "calibration": {
                "edge_calibration_ms": round(self.edge_calibration.value_ms, 3),
                "cloud_calibration_ms": round(self.cloud_calibration.value_ms, 3),
                "samples": self.edge_calibration.samples,
            },
            "predicted_latency_ms": round(self.current.latency_ms, 3),
            "expected_latency_ms": round(learned.expected_ms(self.current), 3),
            "candidates": len(self.rows),
            "fidelity_guard": fidelity_guard(self.edge, self.settings.max_logit_error),
            "ranking": [
                {
                    "cut": r.cut,
                    "codec": r.codec,
                    "predicted_latency_ms": round(r.latency_ms, 3),
                    "expected_latency_ms": round(expected, 3),
                    "measured": learned.known(_key(r)),
                }
                for expected, r in self._ranked(learned)[:5]
            ],
            "measured_routes": learned.to_json(),
            "typical_correction_ms": round(learned.typical, 3),
            "exploring": None
            if exploring is None
            else {
                "cut": exploring.cut,
                "codec": exploring.codec,
                "expected_extra_ms": round(self._exploration_cost_ms, 3),
            },
            "switches": self.switch_count,
            "recent_switches": self.history,
        }
