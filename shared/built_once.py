"""Values built on first use, once each, that a build of another key never holds up (:class:`BuiltOnce`).

The services build a model's halves when a cut is first asked for: the edge its split, the cloud its tail
(an ONNX export and a session, 1.3 s for resnet18, with the engine ``onnxruntime``). Any client of an edge
may ask for any cut, so a build must not stop the halves already built from being looked up.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["BuiltOnce"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Flight:
    """The callers of one key that is not kept, while any of them is in :meth:`BuiltOnce.get`: what its build
    raised, for the callers that waited for it."""

    def __init__(self) -> None:
        self.callers = 0
        self.error: BaseException | None = None


class BuiltOnce(Generic[K, V]):
    """``build(key)`` on the first :meth:`get` of ``key``, kept for the next ones (the ``entries`` most recently
    used when given, else all). Thread-safe: a lookup of a built key never waits for a build; builds run one
    at a time (each may take a core and much memory), and callers of a key being built wait for that build,
    and get what it raised if it fails (a build is not run again for each of them; a later caller tries again)."""

    def __init__(self, build: Callable[[K], V], entries: int | None = None) -> None:
        if entries is not None and entries < 1:
            raise ValueError(f"entries must be at least 1, not {entries}")
        self._build = build
        self._entries = entries
        self._values: OrderedDict[K, V] = OrderedDict()
        self._flights: dict[K, _Flight] = {}
        """The keys being asked for and not kept (at most one per caller in :meth:`get`)."""
        self._lock = threading.Lock()
        """Held only to read or change ``_values`` and ``_flights``."""
        self._building = threading.Lock()
        """Held while a value is built."""

    def __contains__(self, key: K) -> bool:
        return key in self._values

    def _cached(self, key: K) -> tuple[bool, V | None]:
        with self._lock:
            if key not in self._values:
                return False, None
            self._values.move_to_end(key)
            return True, self._values[key]

    def get(self, key: K) -> V:
        """The value of ``key``, built now if it is not kept (what ``build`` raises propagates, to every caller
        that waited for that build; nothing is kept)."""
        found, value = self._cached(key)
        if found:
            return value  # type: ignore[return-value]
        with self._lock:
            flight = self._flights.setdefault(key, _Flight())
            flight.callers += 1
        try:
            with self._building:
                found, value = self._cached(key)  # NOTE: built by the caller this one waited for
                if found:
                    return value  # type: ignore[return-value]
                if flight.error is not None:  # NOTE: the build this caller waited for failed
                    raise flight.error
                try:
                    built = self._build(key)
                except BaseException as exc:
                    flight.error = exc
                    raise
                with self._lock:
                    self._values[key] = built
                    while self._entries is not None and len(self._values) > self._entries:
                        self._values.popitem(last=False)
                return built
        finally:
            with self._lock:
                flight.callers -= 1
                if flight.callers == 0:
                    del self._flights[key]
