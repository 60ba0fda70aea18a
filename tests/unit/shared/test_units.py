"""Rates and durations: a unit is required, bits and bytes are never confused."""

from __future__ import annotations

import pytest

from shared.units import parse_bandwidth, parse_duration


@pytest.mark.parametrize(
    ("text", "bits_per_second"),
    [
        ("20mbit", 20e6),
        ("20Mbit/s", 20e6),
        ("20 mbps", 20e6),
        ("1gbit", 1e9),
        ("500kbit", 500e3),
        ("20MBps", 160e6),
        ("20MB/s", 160e6),
        ("20MByte", 160e6),
        ("20mbyte", 160e6),
        ("2.5mbytes/s", 20e6),
    ],
)
def test_rates(text: str, bits_per_second: float) -> None:
    assert parse_bandwidth(text) == pytest.approx(bits_per_second)


@pytest.mark.parametrize("text", ["20", "20m", "5MB", "20mb", "fast", "0mbit", "-5mbit", "1e999gbit", "20 furlongs"])
def test_unitless_ambiguous_or_nonsense_rates_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"bandwidth|unit"):
        parse_bandwidth(text)


def test_durations_need_a_unit() -> None:
    assert parse_duration("30ms") == pytest.approx(0.03)
    assert parse_duration("0.5s") == 0.5
    assert parse_duration("250us") == pytest.approx(250e-6)
    for text in ("30", "30 min", "soon", ""):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(text)


def test_a_duration_too_long_for_a_float_is_refused() -> None:
    """400 nines of seconds read as an infinite duration (every latency predicted from it infinite too)."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration("9" * 400 + "s")
