"""The lingering close after a refusal (:func:`with_lingering_close`).

A refusal written while the client is still sending (the rest of a huge head, the next of many chunks,
what follows a malformed head, the body of a request answered 503 by the connection limit) is followed by
a lingering close, as Apache and nginx do: closing a socket with unread bytes makes the kernel reset the
connection, and the client's send fails (many clients then never read the answer) or, on some systems, the
answer it had received is dropped. The write side is shut (a FIN after the answer), and what still arrives
is read and dropped, unparsed, until the client closes, :data:`LINGER_S` pass or :data:`LINGER_BYTES`
arrive; then the connection closes. A lingering connection holds its file descriptor, so it still counts
toward ``MAX_CONNECTIONS``: for at most :data:`LINGER_S` more (a connection beyond the ceiling is closed at
once, unanswered, without lingering).
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["LINGER_BYTES", "LINGER_S", "with_lingering_close"]

LINGER_S = 2.0
"""The longest a connection lingers after a refusal, reading what the client still sends (Apache: 2 s)."""
LINGER_BYTES = 1024 * 1024
"""The most a connection reads (and drops) while it lingers after a refusal."""


def with_lingering_close(
    base: type[asyncio.Protocol], seconds: float = LINGER_S, max_bytes: int = LINGER_BYTES
) -> type[asyncio.Protocol]:
    """``base`` (a uvicorn HTTP protocol) with ``close_lingering()``: the way to close a connection after
    writing a refusal while the client may still be sending. The write side is shut once the refusal is
    out (where the transport can: TLS cannot, and its connection lingers without it), and what arrives
    afterwards is dropped unparsed until the client closes, ``seconds`` pass or ``max_bytes`` arrive; then
    the connection closes. A request being served sees its client disconnect (its answer is not written),
    and requests queued behind it are dropped. ``base`` is returned as it is when it has this already."""
    if getattr(base, "close_lingering", None) is not None:
        return base

    class LingeringCloseProtocol(base):  # type: ignore[valid-type, misc]
        _lingering = False
        """Once set, nothing more is parsed or written: the connection closes on the first of the client's
        EOF, the timer, or the byte bound."""
        _linger_left = 0
        _linger_timer: asyncio.TimerHandle | None = None

        def close_lingering(self) -> None:
            transport: Any = self.transport
            if self._lingering or transport.is_closing():
                return
            self._lingering = True
            cycle: Any = self.cycle
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True  # NOTE: as uvicorn's connection_lost: its send does nothing
            if cycle is not None:
                cycle.message_event.set()  # NOTE: its app's receive returns http.disconnect
            getattr(self, "pipeline", []).clear()  # NOTE: httptools' queued requests are not served
            self._unset_keepalive_if_required()
            if transport.can_write_eof():
                transport.write_eof()  # NOTE: a FIN once the refusal is out (asyncio flushes it first)
            self._linger_left = max_bytes
            # NOTE: abort, not close: close waits, without a bound, for what a client that stopped reading left unsent
            self._linger_timer = self.loop.call_later(seconds, transport.abort)
            self.flow.resume_reading()

        def data_received(self, data: bytes) -> None:
            if not self._lingering:
                super().data_received(data)
                return
            self._linger_left -= len(data)
            if self._linger_left <= 0:
                self.transport.abort()  # NOTE: the bound: a client still sending now sees a reset

        def on_response_complete(self) -> None:
            if not self._lingering:  # NOTE: the response of a request served as its refusal was written
                super().on_response_complete()

        def shutdown(self) -> None:
            if self._lingering:
                self.transport.close()
                return
            super().shutdown()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._linger_timer is not None:
                self._linger_timer.cancel()
                self._linger_timer = None
            super().connection_lost(exc)

    LingeringCloseProtocol.__name__ = LingeringCloseProtocol.__qualname__ = f"LingeringClose{base.__name__}"
    return LingeringCloseProtocol
