"""Which route (cut, codec) each request takes: the one owner of the edge's current route.

A policy is asked in two steps, so that asking has no side effects: :meth:`RoutePolicy.choose` says
which route the next request should take (the current one, or now and then another one to learn
from), and :meth:`RoutePolicy.dispatched` records that a request was sent that way. The edge calls
the two together, with no ``await`` between them, once the request's images are read: concurrent
requests cannot all be handed the same exploration. What requests
teach is fed back with :meth:`observe_link` and :meth:`observe_request`; :meth:`replan` acts on it.

Two policies: :class:`FixedRoute` (``--cut NAME``) and ``edge_service.cut_selector.CutSelector``
(``--cut auto``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

from edge_service.runtime import Route
from shared.tail_timings import TailTimings

__all__ = ["FixedRoute", "Purpose", "RouteChoice", "RoutePolicy"]

Purpose = Literal["current", "probe", "explore", "pinned"]
"""Why a request takes its route: the current one, a probe of the link, the measurement of a near-best
route, or the request asked for it (``?cut=`` / ``?codec=``)."""


@dataclass(frozen=True)
class RouteChoice:
    route: Route
    purpose: Purpose = "current"


class RoutePolicy(Protocol):
    @property
    def route(self) -> Route:
        """The current route."""

    def choose(self) -> RouteChoice:
        """The route for the next request that does not ask for one (no side effects)."""

    def dispatched(self, choice: RouteChoice) -> None:
        """A request was sent along ``choice``."""

    def observe_link(self, sent_bytes: int, round_trip_ms: float, timings: TailTimings) -> None:
        """One cloud call's payload size, round trip and the cloud's own timings."""

    def observe_request(self, route: Route, timings_ms: dict[str, float], cloud: TailTimings) -> None:
        """One single-image request that completed where its route says, with the edge's timings."""

    def replan(self) -> bool:
        """Re-plan if it is time; True if the current route changed."""

    def to_json(self) -> dict[str, Any]:
        """What ``/v1/info`` shows of the policy."""


class FixedRoute:
    """``--cut NAME``: every request takes the same route; nothing is learned."""

    def __init__(self, route: Route) -> None:
        self._route = route

    @property
    def route(self) -> Route:
        return self._route

    def choose(self) -> RouteChoice:
        return RouteChoice(self._route)

    def dispatched(self, choice: RouteChoice) -> None:
        return None

    def observe_link(self, sent_bytes: int, round_trip_ms: float, timings: TailTimings) -> None:
        return None

    def observe_request(self, route: Route, timings_ms: dict[str, float], cloud: TailTimings) -> None:
        return None

    def replan(self) -> bool:
        return False

    def to_json(self) -> dict[str, Any]:
        return {"mode": "fixed"}
