"""A warning logged at most every few seconds, for refusals a flooding client can trigger by the thousand."""

from __future__ import annotations

import logging
import time

__all__ = ["Throttled"]

_LOG_EVERY_S = 10.0


class Throttled:
    """A warning logged on ``logger`` at most every few seconds, with how many times it happened meanwhile (a
    client flooding the server must not flood the log too)."""

    def __init__(self, logger: logging.Logger, message: str) -> None:
        self.logger = logger
        self.message = message
        self.count = 0
        self.last = -_LOG_EVERY_S

    def __call__(self, *args: object) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.last >= _LOG_EVERY_S:
            self.logger.warning(self.message + " (%d times since the last such line)", *args, self.count)
            self.count, self.last = 0, now
