"""Running one service in this process with uvicorn, draining on SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import socket
import threading
from types import FrameType
from typing import Any

import uvicorn

from service_core.connections import lowered_default_warning, open_files_limit
from service_core.settings import ServiceSettings
from shared import errors
from splitinfer.failures import CliError, one_line
from splitinfer.http_protocol import http_protocol

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

    def __init__(self, config: uvicorn.Config, drain_s: float) -> None:
        super().__init__(config)
        self.drain_s = drain_s
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        app_state = getattr(self.config.app, "state", None)
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


# Exceptions whose message is written for people (see splitinfer.failures): a lifespan that raises one
# of them is a startup mistake (an unknown cut, a weights file for another model), not a bug.
_EXPECTED = frozenset({"ValueError", "FileNotFoundError", "PermissionError", *errors.__all__})


class _StartupFailure(logging.Filter):
    """Keeps uvicorn from printing the lifespan's traceback when its error is an expected one.

    Starlette hands uvicorn the formatted traceback as the message of ``lifespan.startup.failed``;
    its last line is ``Type: message``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.message: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if not text.startswith("Traceback"):
            return True
        kind, _, detail = text.strip().splitlines()[-1].partition(": ")
        if kind.rsplit(".", 1)[-1] not in _EXPECTED or not detail:
            return True
        self.message = one_line(detail)
        return False


def warn_of_a_lowered_connection_limit(settings: ServiceSettings) -> None:
    """A warning when ``MAX_CONNECTIONS`` defaulted to less than 1024 to fit ``ulimit -n``."""
    explicit = "max_connections" in settings.model_fields_set
    if settings.max_connections is None:
        return
    warning = lowered_default_warning(settings.max_connections, explicit, open_files_limit())
    if warning is not None:
        logger.warning("%s", warning)


def uvicorn_config(app: Any, settings: ServiceSettings, **uvicorn_options: Any) -> uvicorn.Config:
    """How every service runs under uvicorn (``uvicorn_options`` override)."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": 30,
        "timeout_keep_alive": settings.keep_alive_s,
        # NOTE: a deadline on request heads (uvicorn's keep-alive timer does not close half-sent ones) and
        # problem+json for requests uvicorn's parser refuses.
        "http": http_protocol(),
        # NOTE: counted and answered (problem+json 503) by http_protocol; see service_core.connections.
        "limit_concurrency": settings.max_connections,
        "ssl_certfile": str(settings.ssl_certfile) if settings.ssl_certfile else None,
        "ssl_keyfile": str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
    }
    return uvicorn.Config(app, **(options | uvicorn_options))


def run_service(
    app: Any,
    settings: ServiceSettings,
    sockets: list[socket.socket] | None = None,
    *,
    debug: bool = False,
    **uvicorn_options: Any,
) -> None:
    """Serve ``app`` until stopped, on the settings' address or on ``sockets`` already bound (workers); an
    expected startup failure (a bad cut, say) raises :class:`CliError` instead of printing the lifespan's
    traceback (``debug``: print it)."""
    configure_logging(settings.log_level)
    warn_of_a_lowered_connection_limit(settings)
    server = _DrainingServer(uvicorn_config(app, settings, **uvicorn_options), settings.drain_s)
    startup = _StartupFailure()
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not debug:
        uvicorn_log.addFilter(startup)
    try:
        server.run(sockets=sockets)
    except SystemExit as exc:  # NOTE: uvicorn exits (status 3) when the lifespan fails
        if server.started or startup.message is None:
            raise
        raise CliError(f"the service did not start: {startup.message}") from exc
    finally:
        uvicorn_log.removeFilter(startup)
