"""The cloud's Server-Timing: formatted and parsed in one module; a peer's malformed values are skipped."""

from __future__ import annotations

import pytest

from shared.tail_timings import MAX_HEADER_CHARS, TailTimings, format_server_timing


def test_tail_timings_round_trip() -> None:
    timings = TailTimings(recv_ms=12.5, stream_ms=10.25, stream_bytes=60_000, decode_ms=1.0, tail_ms=3.0, total_ms=40)
    header = timings.format()
    assert header == ('recv;dur=12.50, stream;dur=10.25;desc="60000", decode;dur=1.00, tail;dur=3.00, total;dur=40.00')
    assert TailTimings.parse(header) == timings
    assert TailTimings.parse(header).cloud_compute_ms == 4.0


@pytest.mark.parametrize(
    "header",
    [
        'stream;dur=1;desc="²"',  # a Unicode digit: str.isdigit() says yes, int() says no
        "total;dur=²",
        "total;dur=1e999",
        "total;dur=nan",
        "total;dur=-3",
        "total;dur=" + "9" * 5000,
        "total;dur=1;" * (MAX_HEADER_CHARS // 10),
        "unknown;dur=1",
        ";;;,,,=",
    ],
)
def test_malformed_values_from_a_peer_are_skipped(header: str) -> None:
    parsed = TailTimings.parse(header)
    assert parsed.total_ms is None and parsed.stream_bytes is None


def test_generic_header_keeps_its_descriptions() -> None:
    assert format_server_timing({"head": 1.234}, {"head": "x"}) == 'head;dur=1.23;desc="x"'
