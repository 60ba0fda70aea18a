"""A deadline on writing answers to a client that stops reading them (:func:`with_write_deadline`).

An answer is written into the transport, which sends what the client's receive window takes and keeps the
rest. A client that stops reading (a zero window, which TCP keeps open for as long as the client answers
its probes) kept, for as long as it kept the connection: the answer's unsent bytes (the whole of a large
one), the connection (its descriptor, counted toward ``MAX_CONNECTIONS``, since closing waits for those
bytes to be sent), and a request pipelined behind it, whose ``send`` waits for the transport to drain: with
its admission slot and body bytes, so that a few such clients made a service refuse every request for good.
Here, once bytes wait to be sent (the transport asked to pause writing, or an answer is complete but not all
sent), the connection must make progress within :data:`WRITE_DEADLINE_S`, as nginx's ``send_timeout``: the
transport drains below its low-water mark, or what waits shrinks. Otherwise the connection is aborted: the
client is gone, and what its requests held is released.

Over TLS the deadline sees what asyncio's TLS layer holds, not the TCP transport under it, into which that
layer moves an answer as fast as it encrypts it: a request waiting to write (the TLS layer paused) is
bounded here, while an idle connection whose answer waits in the TCP transport is closed by the request-head
deadline and then aborted by asyncio's TLS shutdown timeout (``tls_handshake``: at most 30 s).
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["WRITE_DEADLINE_S", "with_write_deadline"]

WRITE_DEADLINE_S = 60.0
"""The longest bytes may wait to be sent to a client without any progress (nginx's ``send_timeout``)."""


def with_write_deadline(base: type[asyncio.Protocol], seconds: float = WRITE_DEADLINE_S) -> type[asyncio.Protocol]:
    """``base`` (a uvicorn HTTP protocol) whose connection is aborted when bytes wait to be sent to the client
    for ``seconds`` without progress (see the module docstring)."""

    class WriteDeadlineProtocol(base):  # type: ignore[valid-type, misc]
        _write_deadline: asyncio.TimerHandle | None = None
        _unsent_before = 0
        _drained = False
        """The transport drained below its low-water mark since the deadline was armed."""

        def pause_writing(self) -> None:
            super().pause_writing()
            self._arm_write_deadline()

        def resume_writing(self) -> None:
            self._drained = True
            super().resume_writing()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # NOTE: an answer written whole into the transport: the request is over, its bytes may not be
            self._arm_write_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._write_deadline is not None:
                self._write_deadline.cancel()
                self._write_deadline = None
            super().connection_lost(exc)

        def _arm_write_deadline(self) -> None:
            transport: Any = self.transport
            if self._write_deadline is not None or transport is None:
                return
            unsent = transport.get_write_buffer_size()
            if unsent:
                self._unsent_before, self._drained = unsent, False
                self._write_deadline = self.loop.call_later(seconds, self._write_deadline_passed)

        def _write_deadline_passed(self) -> None:
            self._write_deadline = None
            transport: Any = self.transport
            unsent = transport.get_write_buffer_size()
            if not unsent:
                return
            if self._drained or unsent < self._unsent_before:  # NOTE: slow, not stalled: another period
                self._arm_write_deadline()
                return
            transport.abort()  # NOTE: not close: close waits, without a bound, for what is unsent

    WriteDeadlineProtocol.__name__ = WriteDeadlineProtocol.__qualname__ = f"WriteDeadline{base.__name__}"
    return WriteDeadlineProtocol
