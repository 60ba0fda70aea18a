"""The connection limit with problem+json answers (:func:`with_connection_limit`).

Connections are bounded (:mod:`service_core.connections`): uvicorn's ``limit_concurrency`` (the
``MAX_CONNECTIONS`` setting) answers a request beyond it with a ``text/plain`` 503 of its own; here it gets
a problem+json 503 with ``Retry-After`` like the services' other 503s, and a connection opened beyond the
ceiling is closed at once, so the file descriptors the process holds are bounded however fast clients
connect. The 503's connection closes lingering (:mod:`splitinfer.http_protocol.lingering`): the request's
body may still be coming.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from starlette.types import Receive, Scope, Send

from service_core.connections import connection_ceiling
from service_core.problems import domain_problem
from shared.errors import ServiceUnavailable
from splitinfer.http_protocol.lingering import with_lingering_close
from splitinfer.http_protocol.throttled import Throttled

__all__ = ["RefusalCounter", "with_connection_limit"]

logger = logging.getLogger(__name__)

_RETRY_AFTER_S = 1.0


class _ClosesLingering:
    """A transport whose ``close()`` is a lingering one: handed to the cycle of a request answered 503 by the
    connection limit (uvicorn's cycle closes the connection itself once a ``Connection: close`` answer is
    out, while the client may still be sending the request's body)."""

    def __init__(self, transport: asyncio.Transport, close_lingering: Callable[[], None]) -> None:
        self._transport = transport
        self._close_lingering = close_lingering

    def close(self) -> None:
        self._close_lingering()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


RefusalCounter = Callable[[str], None]
"""Called with ``"answered"`` (a request got the 503) or ``"closed"`` (a connection closed unanswered)."""


def with_connection_limit(
    base: type[asyncio.Protocol], on_refused: RefusalCounter | None = None
) -> type[asyncio.Protocol]:
    """``base`` (a uvicorn HTTP protocol) with its config's ``limit_concurrency`` (``MAX_CONNECTIONS``)
    enforced as :mod:`service_core.connections` describes: a request that arrives while more connections are
    open (or more requests are being served) gets a problem+json 503 with ``Retry-After`` and its connection
    is closed; a connection opened beyond :func:`connection_ceiling` is closed at once, unanswered. Each
    refusal is logged (throttled) and passed to ``on_refused`` (the service's metrics). The 503's connection
    closes lingering
    (:func:`~splitinfer.http_protocol.lingering.with_lingering_close`): the request's body may still be coming."""
    logged = {
        "answered": Throttled(logger, "more than %d connections open: a request got 503"),
        "closed": Throttled(logger, "%d connections open: a new connection was closed unanswered"),
    }

    def refused(how: str, count: int) -> None:
        logged[how](count)
        if on_refused is not None:
            on_refused(how)

    base = with_lingering_close(base)

    class ConnectionLimitProtocol(base):  # type: ignore[valid-type, misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            config: Any = args[0] if args else kwargs["config"]
            self._max_connections: int = config.limit_concurrency or 0
            self._ceiling = connection_ceiling(self._max_connections) if self._max_connections else 0
            if self._max_connections:
                # NOTE: uvicorn's own check answers text/plain; this protocol's app checks instead (below).
                self.limit_concurrency = None
                self._served_app: Any = config.loaded_app
                self.app = self._app_within_limit

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            if self._ceiling and len(self.connections) > self._ceiling:
                refused("closed", len(self.connections) - 1)
                transport.close()

        async def _app_within_limit(self, scope: Scope, receive: Receive, send: Send) -> None:
            # NOTE: uvicorn's counts: every open connection (this one included, idle kept-alive ones too)
            # and every request being served (this one included: its task exists when it calls the app).
            limit = self._max_connections
            if scope["type"] == "http" and (len(self.connections) > limit or len(self.tasks) > limit):
                refused("answered", limit)
                busy = ServiceUnavailable(
                    f"the server is serving {limit} connections, its limit; retry shortly",
                    retry_after=_RETRY_AFTER_S,
                )
                response = domain_problem(busy)
                response.headers["Connection"] = "close"
                cycle = getattr(send, "__self__", None)  # NOTE: uvicorn's cycle, which closes after the answer
                transport: asyncio.Transport = self.transport
                if cycle is not None and getattr(cycle, "transport", None) is transport:
                    cycle.transport = _ClosesLingering(transport, self.close_lingering)
                await response(scope, receive, send)
                return
            await self._served_app(scope, receive, send)

    ConnectionLimitProtocol.__name__ = ConnectionLimitProtocol.__qualname__ = f"ConnectionLimit{base.__name__}"
    return ConnectionLimitProtocol
