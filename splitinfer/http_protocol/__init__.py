"""The services' uvicorn HTTP protocol: uvicorn's own, wrapped in what bounds a connection and answers its
refusals in problem+json. Each wrapper is a module of its own:

- :mod:`~splitinfer.http_protocol.framing`: a request head over 64 KiB gets a 431, a chunked body in too many
  chunks a 413 (:func:`~splitinfer.http_protocol.framing.with_framing_limits`);
- :mod:`~splitinfer.http_protocol.head_deadline`: a connection must send a complete request head within the
  keep-alive timeout, and an unparsable request gets a problem+json 400
  (:func:`~splitinfer.http_protocol.head_deadline.with_head_deadline`);
- :mod:`~splitinfer.http_protocol.connection_limit`: ``MAX_CONNECTIONS`` answered with a problem+json 503, and
  connections beyond the ceiling closed at once
  (:func:`~splitinfer.http_protocol.connection_limit.with_connection_limit`);
- :mod:`~splitinfer.http_protocol.lingering`: after a refusal, the connection closes lingering, so that the
  client reads the answer instead of a reset
  (:func:`~splitinfer.http_protocol.lingering.with_lingering_close`, which the three above apply);
- :mod:`~splitinfer.http_protocol.pipelined`: a lost connection is seen by every request it has in progress,
  those pipelined behind another too (:func:`~splitinfer.http_protocol.pipelined.with_pipelined_disconnect`);
- :mod:`~splitinfer.http_protocol.write_deadline`: a client that stops reading its answers is dropped once
  they wait :data:`~splitinfer.http_protocol.write_deadline.WRITE_DEADLINE_S` without progress
  (:func:`~splitinfer.http_protocol.write_deadline.with_write_deadline`);
- :mod:`~splitinfer.http_protocol.tls_handshake`: TLS started by the protocol, its handshake counted and
  bounded (:func:`~splitinfer.http_protocol.tls_handshake.with_tls_handshake`, applied by
  :func:`splitinfer.serve.uvicorn_config` when a certificate is set).

This module composes them (:func:`service_protocol`, :func:`http_protocol`), and names the result for
``uvicorn --http splitinfer.http_protocol:ServiceHTTPProtocol`` (made on first lookup).
"""

from __future__ import annotations

import asyncio
from typing import Any

from splitinfer.http_protocol.connection_limit import RefusalCounter, with_connection_limit
from splitinfer.http_protocol.framing import with_framing_limits
from splitinfer.http_protocol.head_deadline import with_head_deadline
from splitinfer.http_protocol.pipelined import with_pipelined_disconnect
from splitinfer.http_protocol.write_deadline import WRITE_DEADLINE_S, with_write_deadline

__all__ = ["http_protocol", "service_protocol"]


def service_protocol(
    base: type[asyncio.Protocol], on_refused: RefusalCounter | None = None, write_deadline_s: float = WRITE_DEADLINE_S
) -> type[asyncio.Protocol]:
    """``base`` with everything the services add: the connection limit, the request-head deadline, the
    bounds on a request's framing (head size, chunk count), a lost connection seen by all its requests, and
    the deadline on writing to a client that stops reading (``write_deadline_s``)."""
    inner = with_write_deadline(with_pipelined_disconnect(base), write_deadline_s)
    return with_connection_limit(with_head_deadline(with_framing_limits(inner)), on_refused)


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
