"""Bounds on how a request is framed (:func:`with_framing_limits`).

httptools keeps a whole head (every header, a header value however long) in memory until it ends, so one
connection sending header lines as fast as it can grew a service by as much as it sent: a head over
:data:`MAX_HEAD_BYTES` gets a problem+json 431 (h11, where httptools is not installed, refuses it with its
own limit, set to the same size: a 400). A chunked body costs the parser a callback per chunk, so a body
sent a byte a chunk keeps the event loop busy for many times as long as the same body in large chunks: one
in more than :data:`MAX_BODY_CHUNKS` chunks gets a problem+json 413. Either way nothing more is parsed, and
the connection closes lingering (:mod:`splitinfer.http_protocol.lingering`) once the requests before it are
answered.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from shared.errors import PayloadTooLarge, RequestHeadersTooLarge
from splitinfer.http_protocol.lingering import with_lingering_close
from splitinfer.http_protocol.raw_problem import raw_problem
from splitinfer.http_protocol.throttled import Throttled

__all__ = ["MAX_BODY_CHUNKS", "MAX_HEAD_BYTES", "with_framing_limits"]

logger = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
"""The most a request head (request line and headers) may take (nginx allows 32 KB, Node.js 16 KB)."""
MAX_BODY_CHUNKS = 64 * 1024
"""The most chunks (with data) a chunked request body may come in."""


def with_framing_limits(
    base: type[asyncio.Protocol], head_limit: int = MAX_HEAD_BYTES, chunk_limit: int = MAX_BODY_CHUNKS
) -> type[asyncio.Protocol]:
    """``base`` (uvicorn's httptools protocol; any other is returned as it is) with bounds on how a request is
    framed: a head over ``head_limit`` bytes gets a problem+json 431, a chunked body in more than
    ``chunk_limit`` chunks a problem+json 413. Nothing more is parsed from the connection; the refusal is
    written once the requests before it on the connection (pipelined) are answered, and the connection
    closes lingering (:func:`~splitinfer.http_protocol.lingering.with_lingering_close`).

    The bytes of a head are counted from the end of the previous message (or the connection's start) until
    httptools reports the head complete; the parser is fed at most ``head_limit`` bytes at a time, so a head
    is refused within twice the limit wherever it starts. Past the limit the parser is fed only up to it: a
    head that ends there lets the rest through (its body, the next requests), one that does not is refused.

    A request asking to upgrade the connection (WebSocket, h2c) is answered as plain HTTP, and then the
    connection closes: httptools stops parsing at an upgrade, so what the client sent after it is not read.
    """
    if not hasattr(base, "on_headers_complete"):  # NOTE: h11 bounds heads itself (h11_max_incomplete_event_size)
        return base
    base = with_lingering_close(base)
    head_too_large = raw_problem(
        RequestHeadersTooLarge(f"the request head (its line and headers) exceeds {MAX_HEAD_BYTES} bytes"),
        "Request Header Fields Too Large",
    )
    too_many_chunks = raw_problem(
        PayloadTooLarge(
            f"the body is sent in more than {MAX_BODY_CHUNKS} chunks; send it in fewer, larger ones (or with a "
            "Content-Length)"
        ),
        "Content Too Large",
    )
    logged = {
        head_too_large: Throttled(logger, f"a request head over {head_limit} bytes got 431"),
        too_many_chunks: Throttled(logger, f"a body in more than {chunk_limit} chunks got 413"),
    }

    class FramingLimitsProtocol(base):  # type: ignore[valid-type, misc]
        _in_head = True
        _head_bytes = 0
        _heads_completed = 0
        _chunks = 0
        _refused = False
        """Once a request is refused, nothing more is parsed, and the callbacks still due do nothing."""
        _refusal: bytes | None = None
        """The refusal to write once ``_owed`` more responses (to earlier requests) are complete."""
        _owed = 0

        def on_message_begin(self) -> None:
            self._chunks = 0
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._heads_completed += 1
            if self._refused:
                return
            super().on_headers_complete()
            if self.parser.should_upgrade() and self.cycle is not None:
                self.cycle.keep_alive = False  # NOTE: httptools parses nothing after an upgrade

        def _unsupported_upgrade_warning(self) -> None:
            """Silent: no route is a WebSocket (``ws="none"``), and each such request is answered as HTTP."""

        def on_chunk_header(self) -> None:  # NOTE: httptools calls it for every chunk, the closing one too
            self._chunks += 1
            if self._chunks > chunk_limit + 1:
                self._refuse(too_many_chunks)

        def on_body(self, body: bytes) -> None:
            if not self._refused:
                super().on_body(body)

        def on_message_complete(self) -> None:
            self._in_head, self._head_bytes = True, 0
            if not self._refused:
                super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._refusal is not None:
                self._owed -= 1
                if self._owed <= 0:
                    self._write_refusal(self._refusal)

        def data_received(self, data: bytes) -> None:
            if self._lingering:  # NOTE: after the refusal: dropped, and counted, by with_lingering_close
                super().data_received(data)
                return
            view = memoryview(data)
            # NOTE: bounded: each round feeds the parser at least one byte, or refuses
            while view and not self._refused and not self._lingering and not self.transport.is_closing():
                if not self._in_head:
                    super().data_received(view[:head_limit])
                    view = view[head_limit:]
                    continue
                room = head_limit - self._head_bytes
                if len(view) <= room:
                    self._head_bytes += len(view)
                    super().data_received(view)
                    return
                completed = self._heads_completed
                self._head_bytes = head_limit
                super().data_received(view[:room])
                if self._heads_completed == completed:
                    self._refuse(head_too_large)
                    return
                view = view[room:]

        def refuse_in_turn(self, response: bytes) -> None:
            """Refuse the request being parsed (one httptools cannot parse: with_head_deadline's 400) as an
            oversized one is: after the answers owed to the pipelined requests before it."""
            self._refuse(response)

        def _refuse(self, response: bytes) -> None:
            """Refuse the request being parsed: write ``response`` now, or after the responses owed to the
            requests before it; a request already being answered only has its connection closed."""
            if self._refused or self._lingering or self.transport.is_closing():
                return
            self._refused = True
            if response in logged:
                logged[response]()
            cycle: Any = self.cycle
            pipeline: Any = self.pipeline
            if not self._in_head:  # NOTE: a body: the request refused is the newest, ``cycle``
                queued = [entry for entry in pipeline if entry[0] is cycle]
                if not queued and cycle.response_started:
                    self.close_lingering()
                    return
                for entry in queued:
                    pipeline.remove(entry)
                owed = len(pipeline) + 1 if queued else 0
            else:  # NOTE: a head: the requests before it are ``cycle`` (the newest) and those queued
                owed = 0 if cycle is None or cycle.response_complete else len(pipeline) + 1
            if owed:
                self._refusal, self._owed = response, owed
                self.flow.pause_reading()  # NOTE: until the owed responses are out (each resumes it)
                return
            self._write_refusal(response)

        def _write_refusal(self, response: bytes) -> None:
            self._refusal = None
            if not self._lingering and not self.transport.is_closing():
                self.transport.write(response)
                self.close_lingering()  # NOTE: a request in progress sees the client disconnect

    FramingLimitsProtocol.__name__ = FramingLimitsProtocol.__qualname__ = f"FramingLimits{base.__name__}"
    return FramingLimitsProtocol
