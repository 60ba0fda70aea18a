"""One request header read from an ASGI scope's raw headers (torch-free: the torch-free edge's middleware
uses it too)."""

from __future__ import annotations

from starlette.types import Scope

__all__ = ["header_value"]


def header_value(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower-case bytes) in an ASGI scope, or None.

    One pass over the raw headers, comparing bytes: middleware that needs one header should not build a
    ``Headers`` object (it decodes every name, and a missing one costs a raised ``KeyError``).
    """
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None
