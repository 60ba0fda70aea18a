"""The services' uvicorn HTTP protocol: a deadline on each request head, and problem+json for requests
uvicorn cannot parse.

uvicorn arms its keep-alive timeout only once a response is complete, and cancels it as soon as any byte
arrives: a connection that never sends a request, or sends part of a request head and stalls, stays open
for good (one client holding thousands of them exhausts the process's file descriptors, and new clients
are refused). :func:`with_head_deadline` gives a uvicorn HTTP protocol one more timer, armed when the
connection opens and again after each response, that no byte cancels: when it fires and no request is
in progress (its head complete, its response not), the connection is closed. A request whose head is in
is left alone: its body is bounded by the body timeout (:mod:`service_core.body_limit`), its handling by
the service's own deadlines.

Connections are bounded (:mod:`service_core.connections`): uvicorn's ``limit_concurrency`` (the
``MAX_CONNECTIONS`` setting) answers a request beyond it with a ``text/plain`` 503 of its own; here it gets
a problem+json 503 with ``Retry-After`` like the services' other 503s, and a connection opened beyond the
ceiling is closed at once, so the file descriptors the process holds are bounded however fast clients
connect (:func:`with_connection_limit`).

A request's framing is bounded (:func:`with_framing_limits`). httptools keeps a whole head (every header,
a header value however long) in memory until it ends, so one connection sending header lines as fast as it
can grew a service by as much as it sent: a head over :data:`MAX_HEAD_BYTES` gets a problem+json 431 (h11,
where httptools is not installed, refuses it with its own limit, set to the same size: a 400). A chunked
body costs the parser a callback per chunk, so a body sent a byte a chunk keeps the event loop busy for
many times as long as the same body in large chunks: one in more than :data:`MAX_BODY_CHUNKS` chunks gets
a problem+json 413. Either way nothing more is parsed, and the connection closes (lingering, below) once
the requests before it are answered.

A request uvicorn's parser refuses (a control character in a header, a malformed ``Content-Length``)
never reaches the app: uvicorn answers it with a ``text/plain`` 400 of its own. Here it gets the same
``application/problem+json`` body as every other error (README "Errors").

A refusal written while the client is still sending (the rest of a huge head, the next of many chunks,
what follows a malformed head, the body of a request answered 503 by the connection limit) is followed by
a lingering close (:func:`with_lingering_close`), as Apache and nginx do: closing a socket with unread
bytes makes the kernel reset the connection, and the client's send fails (many clients then never read the
answer) or, on some systems, the answer it had received is dropped. The write side is shut (a FIN after
the answer), and what still arrives is read and dropped, unparsed, until the client closes,
:data:`LINGER_S` pass or :data:`LINGER_BYTES` arrive; then the connection closes. A lingering connection
holds its file descriptor, so it still counts toward ``MAX_CONNECTIONS``: for at most :data:`LINGER_S`
more (a connection beyond the ceiling is closed at once, unanswered, without lingering).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

from starlette.types import Receive, Scope, Send

from service_core.connections import connection_ceiling
from service_core.problems import PROBLEM_MEDIA_TYPE, domain_problem
from shared.errors import BadRequest, PayloadTooLarge, RequestHeadersTooLarge, ServiceUnavailable, SplitInferError

__all__ = [
    "LINGER_BYTES",
    "LINGER_S",
    "MAX_BODY_CHUNKS",
    "MAX_HEAD_BYTES",
    "RefusalCounter",
    "http_protocol",
    "service_protocol",
    "with_connection_limit",
    "with_framing_limits",
    "with_head_deadline",
    "with_lingering_close",
    "with_tls_handshake",
]

logger = logging.getLogger(__name__)

_RETRY_AFTER_S = 1.0
_EARLY_BYTES = 1024 * 1024
_TLS_SHUTDOWN_S = 30.0  # NOTE: asyncio's own bound on waiting for a TLS client's close_notify
_TLS_HANDSHAKE_S = 10.0  # NOTE: the longest a handshake may take, however long the keep-alive timeout
_LOG_EVERY_S = 10.0

MAX_HEAD_BYTES = 64 * 1024
"""The most a request head (request line and headers) may take (nginx allows 32 KB, Node.js 16 KB)."""
MAX_BODY_CHUNKS = 64 * 1024
"""The most chunks (with data) a chunked request body may come in."""
LINGER_S = 2.0
"""The longest a connection lingers after a refusal, reading what the client still sends (Apache: 2 s)."""
LINGER_BYTES = 1024 * 1024
"""The most a connection reads (and drops) while it lingers after a refusal."""


def _raw_problem(error: SplitInferError, reason: str) -> bytes:
    """``error``'s problem+json response as bytes to write on a connection uvicorn's cycle does not own
    (the body as :func:`service_core.problems.domain_problem` renders it), closing the connection."""
    body = bytes(domain_problem(error).body)
    head = f"HTTP/1.1 {error.status} {reason}\r\ncontent-type: {PROBLEM_MEDIA_TYPE}\r\ncontent-length: {len(body)}\r\n"
    return head.encode() + b"connection: close\r\n\r\n" + body


_HEAD_TOO_LARGE_RESPONSE = _raw_problem(
    RequestHeadersTooLarge(f"the request head (its line and headers) exceeds {MAX_HEAD_BYTES} bytes"),
    "Request Header Fields Too Large",
)
_TOO_MANY_CHUNKS_RESPONSE = _raw_problem(
    PayloadTooLarge(
        f"the body is sent in more than {MAX_BODY_CHUNKS} chunks; send it in fewer, larger ones (or with a "
        "Content-Length)"
    ),
    "Content Too Large",
)
_BAD_REQUEST_RESPONSE = _raw_problem(BadRequest("the request is not valid HTTP/1.1"), "Bad Request")


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


def with_framing_limits(
    base: type[asyncio.Protocol], head_limit: int = MAX_HEAD_BYTES, chunk_limit: int = MAX_BODY_CHUNKS
) -> type[asyncio.Protocol]:
    """``base`` (uvicorn's httptools protocol; any other is returned as it is) with bounds on how a request is
    framed: a head over ``head_limit`` bytes gets a problem+json 431, a chunked body in more than
    ``chunk_limit`` chunks a problem+json 413. Nothing more is parsed from the connection; the refusal is
    written once the requests before it on the connection (pipelined) are answered, and the connection
    closes lingering (:func:`with_lingering_close`).

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
    logged = {
        _HEAD_TOO_LARGE_RESPONSE: _Throttled(f"a request head over {head_limit} bytes got 431"),
        _TOO_MANY_CHUNKS_RESPONSE: _Throttled(f"a body in more than {chunk_limit} chunks got 413"),
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
                self._refuse(_TOO_MANY_CHUNKS_RESPONSE)

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
                    self._refuse(_HEAD_TOO_LARGE_RESPONSE)
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


def with_head_deadline(base: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
    """``base`` (uvicorn's httptools or h11 protocol) whose connections must send a complete request head
    within the keep-alive timeout of opening, and of their previous response, and whose unparsable requests
    get a problem+json 400 (then a lingering close: :func:`with_lingering_close`)."""
    base = with_lingering_close(base)

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
                refuse_in_turn(_BAD_REQUEST_RESPONSE)
                return
            # NOTE: written as bytes (h11's state machine is in error already); the connection closes.
            if not self._lingering and not self.transport.is_closing():
                self.transport.write(_BAD_REQUEST_RESPONSE)
                self.close_lingering()

        def _head_deadline_passed(self) -> None:
            self._head_deadline = None
            cycle: Any = self.cycle
            if (cycle is None or cycle.response_complete) and not self.transport.is_closing() and not self._lingering:
                self.transport.close()

    HeadDeadlineProtocol.__name__ = HeadDeadlineProtocol.__qualname__ = f"HeadDeadline{base.__name__}"
    return HeadDeadlineProtocol


class _Throttled:
    """A warning logged at most every few seconds, with how many times it happened meanwhile (a client
    flooding the server must not flood the log too)."""

    def __init__(self, message: str) -> None:
        self.message = message
        self.count = 0
        self.last = -_LOG_EVERY_S

    def __call__(self, *args: object) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.last >= _LOG_EVERY_S:
            logger.warning(self.message + " (%d times since the last such line)", *args, self.count)
            self.count, self.last = 0, now


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
    closes lingering (:func:`with_lingering_close`): the request's body may still be coming."""
    logged = {
        "answered": _Throttled("more than %d connections open: a request got 503"),
        "closed": _Throttled("%d connections open: a new connection was closed unanswered"),
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


def with_tls_handshake(
    base: type[asyncio.Protocol], context: ssl.SSLContext, on_refused: RefusalCounter | None = None
) -> type[asyncio.Protocol]:
    """``base`` (a uvicorn HTTP protocol, as :func:`service_protocol` builds it) served over TLS with
    ``context``, the handshake counted and bounded like the connection it opens (the server is then given
    no ``ssl`` of its own: the connections it accepts are plain TCP until this protocol starts TLS).

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
    logged = _Throttled("%d connections open: a new TLS connection was closed before its handshake")
    misread = _Throttled(
        "a TLS connection's first bytes were read before its handshake started, and it was closed: its event "
        "loop ignores pause_reading() in connection_made (serve TLS on asyncio's loop)"
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
            except OSError:  # NOTE: timed out, refused by TLS or reset; start_tls has closed the connection
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


def service_protocol(base: type[asyncio.Protocol], on_refused: RefusalCounter | None = None) -> type[asyncio.Protocol]:
    """``base`` with everything the services add: the connection limit, the request-head deadline and the
    bounds on a request's framing (head size, chunk count)."""
    return with_connection_limit(with_head_deadline(with_framing_limits(base)), on_refused)


def http_protocol(on_refused: RefusalCounter | None = None) -> type[asyncio.Protocol]:
    """uvicorn's automatic choice of HTTP protocol (httptools when installed, else h11), as the services run it."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return service_protocol(AutoHTTPProtocol, on_refused)


def __getattr__(name: str) -> Any:
    """``ServiceHTTPProtocol``: :func:`http_protocol` for a service run by uvicorn itself, made when it is
    first looked up (no work at import)::

        uvicorn --factory cloud_service.app:create_app --http splitinfer.http_protocol:ServiceHTTPProtocol \\
            --ws none --limit-concurrency 1024 --h11-max-incomplete-event-size 65536

    gives it what ``splitinfer cloud`` does but the refusal counter: the connection cap (from
    ``--limit-concurrency``), the request-head deadline (``--timeout-keep-alive``), the framing bounds, the
    problem+json answers and the lingering close."""
    if name == "ServiceHTTPProtocol":
        return http_protocol()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
