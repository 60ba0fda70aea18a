"""A deadline on each request head, and problem+json for requests uvicorn cannot parse
(:func:`with_head_deadline`).

uvicorn arms its keep-alive timeout only once a response is complete, and cancels it as soon as any byte
arrives: a connection that never sends a request, or sends part of a request head and stalls, stays open
for good (one client holding thousands of them exhausts the process's file descriptors, and new clients
are refused). :func:`with_head_deadline` gives a uvicorn HTTP protocol one more timer, armed when the
connection opens and again after each response, that no byte cancels: when it fires and no request is
in progress (its head complete, its response not), the connection is closed. A request whose head is in
is left alone: its body is bounded by the body timeout (:mod:`service_core.body_limit`), its handling by
the service's own deadlines.

A request uvicorn's parser refuses (a control character in a header, a malformed ``Content-Length``)
never reaches the app: uvicorn answers it with a ``text/plain`` 400 of its own. Here it gets the same
``application/problem+json`` body as every other error (README "Errors"), and then a lingering close
(:mod:`splitinfer.http_protocol.lingering`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from shared.errors import BadRequest
from splitinfer.http_protocol.lingering import with_lingering_close
from splitinfer.http_protocol.raw_problem import raw_problem

__all__ = ["with_head_deadline"]


def with_head_deadline(base: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
    """``base`` (uvicorn's httptools or h11 protocol) whose connections must send a complete request head
    within the keep-alive timeout of opening, and of their previous response, and whose unparsable requests
    get a problem+json 400 (then a lingering close:
    :func:`~splitinfer.http_protocol.lingering.with_lingering_close`)."""
    base = with_lingering_close(base)
    bad_request = raw_problem(BadRequest("the request is not valid HTTP/1.1"), "Bad Request")

    class HeadDeadlineProtocol(base):  # type: ignore[valid-type, misc]
        _head_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self._arm_head_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_head_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_deadline()
            super().connection_lost(exc)

        def _arm_head_deadline(self) -> None:
            self._cancel_head_deadline()
            if not self.transport.is_closing() and not self._lingering:
                self._head_deadline = self.loop.call_later(self.timeout_keep_alive, self._head_deadline_passed)

        def _cancel_head_deadline(self) -> None:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
                self._head_deadline = None

        def send_400_response(self, msg: str) -> None:
            # NOTE: httptools parses pipelined requests ahead of their answers: the 400 waits for theirs
            # (with_framing_limits), else it would be read as the answer to the first of them.
            refuse_in_turn = getattr(self, "refuse_in_turn", None)
            if refuse_in_turn is not None:
                refuse_in_turn(bad_request)
                return
            # NOTE: written as bytes (h11's state machine is in error already); the connection closes.
            if not self._lingering and not self.transport.is_closing():
                self.transport.write(bad_request)
                self.close_lingering()

        def _head_deadline_passed(self) -> None:
            self._head_deadline = None
            cycle: Any = self.cycle
            if (cycle is None or cycle.response_complete) and not self.transport.is_closing() and not self._lingering:
                self.transport.close()

    HeadDeadlineProtocol.__name__ = HeadDeadlineProtocol.__qualname__ = f"HeadDeadline{base.__name__}"
    return HeadDeadlineProtocol
