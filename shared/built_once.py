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


class BuiltOnce(Generic[K, V]):
    """``build(key)`` on the first :meth:`get` of ``key``, kept for the next ones (the ``entries`` most recently
    used when given, else all). Thread-safe: a lookup of a built key never waits for a build; builds run one
    at a time (each may take a core and much memory), and callers of a key being built wait for that build."""

    def __init__(self, build: Callable[[K], V], entries: int | None = None) -> None:
        if entries is not None and entries < 1:
            raise ValueError(f"entries must be at least 1, not {entries}")
        self._build = build
        self._entries = entries
        self._values: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        """Held only to read or change ``_values``."""
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
        """The value of ``key``, built now if it is not kept (what ``build`` raises propagates; nothing is kept)."""
        found, value = self._cached(key)
        if found:
            return value  # type: ignore[return-value]
        with self._building:
            found, value = self._cached(key)  # NOTE: built by the caller this one waited for
            if found:
                return value  # type: ignore[return-value]
            built = self._build(key)
            with self._lock:
                self._values[key] = built
                while self._entries is not None and len(self._values) > self._entries:
                    self._values.popitem(last=False)
            return built
