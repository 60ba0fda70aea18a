"""Running one service in this process with uvicorn, draining on SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from starlette.types import Message, Receive, Scope, Send

from service_core.connections import lowered_default_warning, open_files_limit
from service_core.host_guard import HostGuard, allowed_host_names
from service_core.serving import ServingSettings
from splitinfer.failures import CliError, startup_failure
from splitinfer.http_protocol import http_protocol
from splitinfer.http_protocol.connection_limit import RefusalCounter
from splitinfer.http_protocol.framing import MAX_HEAD_BYTES
from splitinfer.http_protocol.tls_handshake import with_tls_handshake

__all__ = ["configure_logging", "run_service", "uvicorn_config", "warn_of_a_lowered_connection_limit"]

logger = logging.getLogger("splitinfer")


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    # NOTE: httpx logs every request at INFO; our own access log already has one line per request.
    logging.getLogger("httpx").setLevel(logging.WARNING)


class _DrainingServer(uvicorn.Server):
    """On the first SIGTERM/SIGINT: /readyz turns 503 for ``drain_s``, then uvicorn stops accepting and
    finishes the requests in flight. A second signal stops at once."""

    def __init__(self, config: uvicorn.Config, drain_s: float, app: Any) -> None:
        super().__init__(config)
        self.drain_s = drain_s
        self.app = app
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        app_state = getattr(self.app, "state", None)
        if self._draining or self.drain_s <= 0 or app_state is None:
            if app_state is not None:
                app_state.draining = True
            super().handle_exit(sig, frame)
            return
        self._draining = True
        app_state.draining = True
        logger.info("draining: /readyz answers 503 for %.1f s, then in-flight requests finish", self.drain_s)
        timer = threading.Timer(self.drain_s, super().handle_exit, (sig, frame))
        timer.daemon = True
        timer.start()

    def _log_started_message(self, listeners: Sequence[socket.SocketType]) -> None:
        # NOTE: uvicorn's line says https when its config has an SSL context; the services' TLS is their
        # protocol's (with_tls_handshake), and the server's config has none.
        tls = getattr(self.config.http_protocol_class, "tls_context", None)
        if tls is None:
            super()._log_started_message(listeners)
            return
        self.config.ssl = tls
        try:
            super()._log_started_message(listeners)
        finally:
            self.config.ssl = None


class _StartupErrors:
    """The served app, whose lifespan's startup error is kept (the exception itself) for :func:`run_service`
    to report in one line; with ``quiet``, uvicorn is not handed the traceback to log.

    Starlette sends uvicorn the formatted traceback with ``lifespan.startup.failed`` and then raises the
    error, which uvicorn swallows: the text is all uvicorn has, and the last line of a traceback is not the
    error when its message spans several lines (torch's unpickling error does).
    """

    def __init__(self, app: Any, *, quiet: bool) -> None:
        self.app = app
        self.quiet = quiet
        self.error: BaseException | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_startup(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "lifespan.startup.complete"
            if message["type"] == "lifespan.startup.failed" and self.quiet:
                message = {"type": message["type"]}  # NOTE: without the traceback; run_service reports it
            await send(message)

        try:
            await self.app(scope, receive, send_startup)
        except BaseException as exc:
            if not started:
                self.error = exc
            raise


def warn_of_a_lowered_connection_limit(settings: ServingSettings) -> None:
    """A warning when ``MAX_CONNECTIONS`` defaulted to less than 1024 to fit ``ulimit -n``."""
    explicit = "max_connections" in settings.model_fields_set
    if settings.max_connections is None:
        return
    warning = lowered_default_warning(settings.max_connections, explicit, open_files_limit())
    if warning is not None:
        logger.warning("%s", warning)


def uvicorn_config(
    app: Any, settings: ServingSettings, on_refused: RefusalCounter | None = None, **uvicorn_options: Any
) -> uvicorn.Config:
    """How every service runs under uvicorn (``uvicorn_options`` override; ``on_refused`` counts the
    connections ``MAX_CONNECTIONS`` refuses)."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": 30,
        "timeout_keep_alive": settings.keep_alive_s,
        # NOTE: a deadline on request heads (uvicorn's keep-alive timer does not close half-sent ones) and
        # problem+json for requests uvicorn's parser refuses.
        "http": http_protocol(on_refused),
        # NOTE: no route is a WebSocket: an Upgrade request is served as the plain HTTP request it also is
        # (uvicorn would hand it to a WebSocket library and answer a bodiless text/plain 403).
        "ws": "none",
        # NOTE: h11 (where httptools is not installed) refuses longer heads itself; httptools is bounded by
        # http_protocol's with_framing_limits (splitinfer.http_protocol.framing)
        "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
        # NOTE: counted and answered (problem+json 503) by http_protocol; see service_core.connections.
        "limit_concurrency": settings.max_connections,
    }
    if settings.ssl_certfile is not None:
        # NOTE: uvloop reads a new connection's first bytes (the ClientHello) before the protocol can start
        # TLS on it (it ignores pause_reading() in connection_made); asyncio's loop waits
        options["loop"] = "asyncio"
    options |= uvicorn_options
    if settings.ssl_certfile is not None:
        # NOTE: TLS is the protocol's, not the server's: the handshake is then counted and bounded
        context = _tls_context(settings.ssl_certfile, settings.ssl_keyfile)
        options["http"] = with_tls_handshake(options["http"], context, on_refused)
    return uvicorn.Config(app, **options)


def _tls_context(certfile: Path, keyfile: Path | None) -> ssl.SSLContext:
    """The context uvicorn would make of ``--ssl-certfile`` and ``--ssl-keyfile`` (its defaults)."""
    return uvicorn.config.create_ssl_context(
        certfile=certfile,
        keyfile=keyfile,
        password=None,
        ssl_version=uvicorn.config.SSL_PROTOCOL_VERSION,
        cert_reqs=ssl.CERT_NONE,
        ca_certs=None,
        ciphers=None,
    )


def _refusal_counter(app: Any) -> RefusalCounter | None:
    """The service's ``splitinfer_connections_refused`` counter (``app.state.metrics``), if it has one."""
    metrics = getattr(getattr(app, "state", None), "metrics", None)
    counter = getattr(metrics, "connections_refused", None)
    if counter is None:
        return None

    def count(how: str) -> None:
        counter.labels(how).inc()

    return count


def run_service(
    app: Any,
    settings: ServingSettings,
    sockets: list[socket.socket] | None = None,
    *,
    debug: bool = False,
    **uvicorn_options: Any,
) -> None:
    """Serve ``app`` until stopped, on the settings' address or on ``sockets`` already bound (workers); an
    expected startup failure (a bad cut, a weights file that is not one) raises :class:`CliError` saying it in
    one line (the error's type and the first line of its message) instead of printing the lifespan's
    traceback (``debug``: print it)."""
    configure_logging(settings.log_level)
    warn_of_a_lowered_connection_limit(settings)
    allowed = allowed_host_names(settings.host, settings.allowed_hosts)
    served = _StartupErrors(app if allowed is None else HostGuard(app, allowed), quiet=not debug)
    config = uvicorn_config(served, settings, _refusal_counter(app), **uvicorn_options)
    server = _DrainingServer(config, settings.drain_s, app)
    try:
        server.run(sockets=sockets)
    except SystemExit as exc:  # NOTE: uvicorn exits (status 3) when the lifespan fails
        failure = served.error
        if server.started or failure is None or debug:
            raise
        message = startup_failure(failure)
        if message is None:  # NOTE: a bug: its traceback, which uvicorn was not handed
            logger.error("the service did not start", exc_info=failure)
            raise
        raise CliError(f"the service did not start: {message}") from exc
