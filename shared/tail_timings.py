"""What the cloud tells the edge about one ``/v1/tail`` call, in its ``Server-Timing`` header.

The cloud formats a :class:`TailTimings` and the edge parses it, both here, so the names never drift. The
edge reads a peer's header: :meth:`TailTimings.parse` accepts only ASCII decimal numbers, finite and
non-negative, from a header of bounded length, and skips anything else instead of raising; and
:meth:`TailTimings.consistent_with` keeps them only where they fit what the edge measured itself.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields

__all__ = ["MAX_HEADER_CHARS", "BodyArrival", "TailTimings", "format_server_timing"]

MAX_HEADER_CHARS = 4096
"""A longer ``Server-Timing`` header from the cloud is ignored whole."""

_NUMBER = re.compile(r"^[0-9]{1,12}(\.[0-9]{1,9})?$")  # NOTE: ASCII only; str.isdigit() accepts '²'.


@dataclass
class BodyArrival:
    """When a request body's chunks arrived (``time.perf_counter``): the first one, and the rest after it.

    The rest is what times a link's rate: its first bytes often arrive at once (a token bucket's burst,
    the start of the body read together with the headers), so the whole body over its whole time
    overrates the link, the more so the smaller the body.
    """

    first_at: float = 0.0
    first_bytes: int = 0
    last_at: float = 0.0
    total_bytes: int = 0

    def add(self, size: int) -> None:
        now = time.perf_counter()
        if self.total_bytes == 0:
            self.first_at, self.first_bytes = now, size
        self.last_at, self.total_bytes = now, self.total_bytes + size

    @property
    def streamed_bytes(self) -> int:
        """The bytes after the first chunk."""
        return self.total_bytes - self.first_bytes

    @property
    def streamed_ms(self) -> float:
        """How long the bytes after the first chunk took to arrive."""
        return (self.last_at - self.first_at) * 1000


@dataclass(frozen=True)
class TailTimings:
    """One tail call as the cloud saw it, in milliseconds (``None``: not reported)."""

    recv_ms: float | None = None
    """From the request's headers to its whole body."""
    stream_ms: float | None = None
    """The body after its first chunk (:class:`BodyArrival`): what times the uplink."""
    stream_bytes: int | None = None
    """How many bytes ``stream_ms`` timed."""
    decode_ms: float | None = None
    queue_ms: float | None = None
    tail_ms: float | None = None
    total_ms: float | None = None
    """From the request's headers to the reply's body."""

    def format(self) -> str:
        """The ``Server-Timing`` header value (``stream`` carries its bytes as ``desc``)."""
        timings = {name.removesuffix("_ms"): value for name in _DURATIONS if (value := getattr(self, name)) is not None}
        descriptions = {"stream": str(self.stream_bytes)} if self.stream_bytes is not None else {}
        return format_server_timing(timings, descriptions)

    @classmethod
    def parse(cls, header: str) -> TailTimings:
        """Read a peer's header; malformed, unknown, non-finite or over-long entries are left out."""
        if len(header) > MAX_HEADER_CHARS:
            return cls()
        known = {f.name.removesuffix("_ms") for f in fields(cls) if f.name.endswith("_ms")}
        values: dict[str, float | int] = {}
        for entry in header.split(","):
            name, _, rest = entry.strip().partition(";")
            if name not in known:
                continue
            for param in rest.split(";"):
                key, _, text = param.strip().partition("=")
                text = text.strip().strip('"')
                if not _NUMBER.match(text):
                    continue
                if key == "dur" and math.isfinite(number := float(text)):
                    values[f"{name}_ms"] = number
                elif key == "desc" and name == "stream" and "." not in text:
                    values["stream_bytes"] = int(text)
        return cls(**values)  # type: ignore[arg-type]

    def consistent_with(self, round_trip_ms: float, sent_bytes: int) -> TailTimings:
        """These timings if they fit the call the edge measured, else none (a cloud that lies teaches nothing).

        No part of the cloud's handling can take longer than the round trip the edge waited for its reply,
        nor can the cloud have timed more bytes than were sent: a cloud that says so (a bug, or a peer that
        lies) would otherwise steer the edge's plan, e.g. one reply's ``tail;dur=999999999999`` added
        1e11 ms to the calibrated cloud compute, and only ~120 more calls wore it off.
        """
        limit = round_trip_ms + _ROUNDING_MS
        durations = (getattr(self, name) for name in _DURATIONS)
        if any(value is not None and value > limit for value in durations):
            return TailTimings()
        if self.stream_bytes is not None and self.stream_bytes > sent_bytes:
            return TailTimings()
        return self

    @property
    def cloud_compute_ms(self) -> float | None:
        """What the cloud spent decoding the payload and running the tail."""
        if self.decode_ms is None or self.tail_ms is None:
            return None
        return self.decode_ms + self.tail_ms


_DURATIONS = tuple(f.name for f in fields(TailTimings) if f.name.endswith("_ms"))
"""TailTimings' durations, in the order they are reported (looked up once, not per request)."""
_ROUNDING_MS = 0.01
"""The header carries durations rounded to 0.01 ms."""


def format_server_timing(timings_ms: Mapping[str, float], descriptions: Mapping[str, str] | None = None) -> str:
    """A ``Server-Timing`` header value: ``name;dur=ms``, with ``;desc="..."`` where one is given."""
    descriptions = descriptions or {}
    return ", ".join(
        f"{name};dur={value:.2f}" + (f';desc="{descriptions[name]}"' if name in descriptions else "")
        for name, value in timings_ms.items()
    )
