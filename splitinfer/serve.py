"""Running one service in this process with uvicorn, draining on SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import threading
from types import FrameType
from typing import Any

import uvicorn

from service_core.settings import ServiceSettings

__all__ = ["configure_logging", "run_service"]

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


def run_service(app: Any, settings: ServiceSettings, **uvicorn_options: Any) -> None:
    configure_logging(settings.log_level)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
        ssl_certfile=str(settings.ssl_certfile) if settings.ssl_certfile else None,
        ssl_keyfile=str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
        **uvicorn_options,
    )
    _DrainingServer(config, settings.drain_s).run()
