"""TLS started by the HTTP protocol, its handshake counted and bounded like the connection it opens
(:func:`with_tls_handshake`).

Why the services run on asyncio's event loop when they serve TLS: the handshake starts from
``connection_made``, which pauses reading until the TLS layer is in place; uvloop 0.23 reads the connection
all the same (see :func:`with_tls_handshake`), asyncio's loop waits.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from service_core.connections import connection_ceiling
from splitinfer.http_protocol.connection_limit import RefusalCounter
from splitinfer.http_protocol.throttled import Throttled

__all__ = ["with_tls_handshake"]

logger = logging.getLogger(__name__)

_EARLY_BYTES = 1024 * 1024
_TLS_SHUTDOWN_S = 30.0  # NOTE: asyncio's own bound on waiting for a TLS client's close_notify
_TLS_HANDSHAKE_S = 10.0  # NOTE: the longest a handshake may take, however long the keep-alive timeout


def with_tls_handshake(
    base: type[asyncio.Protocol], context: ssl.SSLContext, on_refused: RefusalCounter | None = None
) -> type[asyncio.Protocol]:
    """``base`` (a uvicorn HTTP protocol, as :func:`splitinfer.http_protocol.service_protocol` builds it)
    served over TLS with ``context``, the handshake counted and bounded like the connection it opens (the
    server is then given no ``ssl`` of its own: the connections it accepts are plain TCP until this protocol
    starts TLS).

    With ``ssl`` given to the server, asyncio runs the handshake before the HTTP protocol sees the connection,
    for up to 60 s: connections that never send a ClientHello were neither counted toward ``MAX_CONNECTIONS``
    nor closed for a minute, so a client opening them as fast as it could exhausted the process's file
    descriptors. Here a connection counts from the moment it is accepted: one opened beyond
    :func:`connection_ceiling` is closed at once, unanswered, and a handshake not complete within the
    keep-alive timeout (at most 10 s) is aborted. Then ``base`` takes the connection over, and its request-head deadline
    starts. Closing waits for the client's close_notify for the keep-alive timeout too, at most asyncio's
    default of 30 s (the connection counted all along), then the connection is dropped.

    The loop must honour ``pause_reading()`` from ``connection_made`` (asyncio's does; uvloop 0.23 starts
    reading right after it all the same, and the ClientHello would be read before the TLS layer is in
    place): a connection whose bytes arrive before its handshake starts is closed, and an error logged.
    The services run on asyncio's loop when they serve TLS (:func:`splitinfer.serve.uvicorn_config`)."""
    logged = Throttled(logger, "%d connections open: a new TLS connection was closed before its handshake")
    plain = Throttled(
        logger,
        "a client sent plain HTTP to this HTTPS port, and its connection was closed: its URL for this service "
        "must start with https:// (an edge's CLOUD_URL, with --ca-bundle for a self-signed certificate)",
    )
    misread = Throttled(
        logger,
        "a TLS connection's first bytes were read before its handshake started, and it was closed: its event "
        "loop ignores pause_reading() in connection_made (serve TLS on asyncio's loop)",
    )

    class TlsHandshakeProtocol(asyncio.Protocol):
        tls_context = context
        """What the server serves TLS with (for its startup line)."""

        def __init__(self, config: Any, server_state: Any, app_state: Any, _loop: Any = None) -> None:
            self._arguments = {"config": config, "server_state": server_state, "app_state": app_state}
            self.loop: asyncio.AbstractEventLoop = _loop or asyncio.get_event_loop()
            self.connections: set[Any] = server_state.connections
            self._timeout_s: float = config.timeout_keep_alive
            limit = config.limit_concurrency or 0
            self._ceiling = connection_ceiling(limit) if limit else 0
            self.transport: asyncio.Transport | None = None
            self._handshake: asyncio.Task[None] | None = None
            self._handshaking = False
            self._early = bytearray()
            """Bytes (decrypted) that came with the handshake's end, before ``base`` took the connection over."""

        def connection_made(self, transport: Any) -> None:  # NOTE: create_server's: an asyncio.Transport
            self.transport = transport
            self.connections.add(self)
            if self._ceiling and len(self.connections) > self._ceiling:
                self.connections.discard(self)
                logged(len(self.connections))
                if on_refused is not None:
                    on_refused("closed")
                transport.close()
                return
            transport.pause_reading()  # NOTE: the ClientHello is for the TLS layer start_tls puts in between
            self._handshake = self.loop.create_task(self._serve_over_tls(transport))

        async def _serve_over_tls(self, transport: asyncio.Transport) -> None:
            try:
                if transport.is_closing():
                    return
                self._handshaking = True
                # NOTE: the close too (a cloud's 65 s keep-alive keeps asyncio's 30 s for it)
                tls = await self.loop.start_tls(
                    transport,
                    self,
                    context,
                    server_side=True,
                    ssl_handshake_timeout=min(self._timeout_s, _TLS_HANDSHAKE_S),
                    ssl_shutdown_timeout=min(self._timeout_s, _TLS_SHUTDOWN_S),
                )
            except OSError as exc:  # NOTE: timed out, refused by TLS or reset; start_tls has closed the connection
                # NOTE: OpenSSL knows an HTTP request line from a ClientHello: the client's scheme is wrong, which
                # it sees as nothing but a reset, so the log says so
                if isinstance(exc, ssl.SSLError) and exc.reason == "HTTP_REQUEST":
                    plain()
                return
            finally:
                self.connections.discard(self)
            if tls is None or tls.is_closing():  # NOTE: lost at the handshake's end: nothing to hand over
                transport.close()
                return
            protocol = base(**self._arguments, _loop=self.loop)  # type: ignore[call-arg]
            tls.set_protocol(protocol)
            protocol.connection_made(tls)
            if self._early and not tls.is_closing():
                protocol.data_received(bytes(self._early))
            self._early = bytearray()

        def data_received(self, data: bytes) -> None:
            if not self._handshaking:  # NOTE: the loop read the ClientHello before start_tls: no handshake
                misread()
                if self.transport is not None:
                    self.transport.close()
                return
            # NOTE: bounded: what one read brings between the handshake's end and this task's next step
            self._early += data
            if len(self._early) > _EARLY_BYTES and self.transport is not None:
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self.connections.discard(self)

        def shutdown(self) -> None:
            """The server stops: a handshake in progress is abandoned."""
            if self.transport is not None:
                self.transport.close()

    TlsHandshakeProtocol.__name__ = TlsHandshakeProtocol.__qualname__ = f"TlsHandshake{base.__name__}"
    return TlsHandshakeProtocol
