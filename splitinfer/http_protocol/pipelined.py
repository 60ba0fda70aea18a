"""Every request in progress on a connection sees it close, pipelined ones too (:func:`with_pipelined_disconnect`).

httptools parses requests pipelined behind one being served, and uvicorn keeps only the newest as the
connection's ``cycle``: when the connection is lost, only that newest (queued, never started) request is
marked disconnected. The one being served was not: its ``receive()`` waited for a disconnect for ever (a
task, and whatever it holds, for the life of the process), and its answer was written to the closed
transport, which raises on uvloop (a 500 and two tracebacks in the log for each client that pipelines and
resets). Here every request the connection parsed and did not answer is marked disconnected and woken.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["with_pipelined_disconnect"]


def with_pipelined_disconnect(base: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
    """``base`` (uvicorn's httptools protocol; h11's, which serves one request at a time and parses nothing
    behind it, is returned as it is) whose lost connection is seen by every request it parsed and has not
    answered: each is marked disconnected (its ``send`` does nothing) and its ``receive`` returns
    ``http.disconnect``."""
    if not hasattr(base, "on_headers_complete"):
        return base

    class PipelinedDisconnectProtocol(base):  # type: ignore[valid-type, misc]
        _unanswered: list[Any] | None = None
        """The cycles of the requests parsed on this connection whose response is not complete (bounded: those
        answered are dropped as each new head arrives, and uvicorn stops reading while requests are queued)."""

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            cycle = self.cycle
            if cycle is None:
                return
            unanswered = [c for c in self._unanswered or () if not c.response_complete and c is not cycle]
            unanswered.append(cycle)
            self._unanswered = unanswered

        def connection_lost(self, exc: Exception | None) -> None:
            for cycle in self._unanswered or ():
                if cycle is not self.cycle and not cycle.response_complete:
                    cycle.disconnected = True  # NOTE: as uvicorn's connection_lost does for the newest
                    cycle.message_event.set()
            self._unanswered = None
            super().connection_lost(exc)

    PipelinedDisconnectProtocol.__name__ = PipelinedDisconnectProtocol.__qualname__ = (
        f"PipelinedDisconnect{base.__name__}"
    )
    return PipelinedDisconnectProtocol
