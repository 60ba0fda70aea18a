"""Rates and durations as people write them, read strictly: a unit is required, and bits and bytes never mix.

Rates: a number, an optional SI prefix (k, M, G, T; either case) and a unit: ``bit``/``bits``/``bps``/``b/s``
for bits per second, ``byte``/``bytes``/``Bps``/``B/s`` for bytes per second (``20mbit``, ``1Gbit/s``,
``2.5MBps``, ``500kbyte``). A lone ``b``/``B`` (``5MB``, ``20mb``) is refused: people write it for both.
Durations: a number and ``us``, ``ms`` or ``s`` (``30ms``, ``0.03s``).
"""

from __future__ import annotations

import math
import re

__all__ = ["parse_bandwidth", "parse_duration"]

_RATE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([kKmMgGtT]?)\s*([A-Za-z/]+)\s*$")
_PREFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_BITS = {"bit", "bits", "bit/s", "bits/s", "bps", "b/s"}
_BYTES = {"byte", "bytes", "byte/s", "bytes/s", "Bps", "B/s"}
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(us|ms|s)\s*$")
_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_RATE_HINT = "write e.g. 20mbit, 1gbit/s, 500kbit or 2.5MBps (bytes per second)"


def _unit_kind(unit: str) -> float | None:
    """8.0 for bytes, 1.0 for bits, None for anything else (``b``/``B`` alone are ambiguous)."""
    if unit in ("Bps", "B/s"):
        return 8.0
    if unit in ("bps", "b/s"):
        return 1.0
    lowered = unit.lower()
    if lowered in _BYTES:
        return 8.0
    if lowered in _BITS:
        return 1.0
    return None


def parse_bandwidth(text: str) -> float:
    """A rate such as ``20mbit`` or ``2.5MBps`` to bits per second; unitless or ambiguous text is refused."""
    match = _RATE.match(text)
    if match is None:
        raise ValueError(f"cannot read bandwidth {text!r}: a number and a unit are needed; {_RATE_HINT}")
    number, prefix, unit = match.groups()
    factor = _unit_kind(unit)
    if factor is None:
        if unit in ("b", "B"):
            raise ValueError(f"bandwidth {text!r} is ambiguous (bits or bytes?); {_RATE_HINT}")
        raise ValueError(f"unknown unit {unit!r} in bandwidth {text!r}; {_RATE_HINT}")
    bits = float(number) * _PREFIX[prefix.lower()] * factor
    if not math.isfinite(bits) or bits <= 0:
        raise ValueError(f"bandwidth {text!r} must be a positive, finite rate")
    return bits


def parse_duration(text: str) -> float:
    """A duration such as ``30ms``, ``0.03s`` or ``250us`` to seconds; a bare number is refused."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"cannot read duration {text!r}: write a number and a unit, e.g. 30ms, 0.03s or 250us")
    seconds = float(match.group(1)) * _SECONDS[match.group(2)]
    if not math.isfinite(seconds):
        raise ValueError(f"duration {text!r} must be finite")
    return seconds
