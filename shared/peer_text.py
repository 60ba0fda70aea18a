"""A peer's text (a cloud's error reply) made safe to echo in our replies and logs, once for both edges."""

from __future__ import annotations

import json

__all__ = ["MAX_DETAIL_CHARS", "problem_detail", "sanitize"]

MAX_DETAIL_CHARS = 300
"""The most of a peer's error text that reaches our replies and logs."""


def sanitize(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """A peer's text made safe to echo and log: printable characters only (newlines and other controls
    become spaces, so it cannot forge a log line), at most ``limit`` characters."""
    cleaned = "".join(c if c.isprintable() else " " for c in text[: limit + 1])
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


def problem_detail(body: bytes) -> str:
    """The ``detail`` of a peer's problem+json reply (else its text), sanitized."""
    try:
        problem = json.loads(body)
    except (ValueError, RecursionError):
        return sanitize(body.decode("utf-8", "replace"))
    detail = problem.get("detail") if isinstance(problem, dict) else None
    return sanitize(detail if isinstance(detail, str) else body.decode("utf-8", "replace"))
