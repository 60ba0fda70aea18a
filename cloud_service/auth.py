"""The cloud's bearer-token check (every ``/v1/*`` route)."""

from __future__ import annotations

import hmac

from shared.errors import Unauthorized

__all__ = ["check_bearer"]


def check_bearer(expected: str | None, authorization: str) -> None:
    """With a token configured, the ``Authorization`` header must be ``Bearer <token>`` (compared in
    constant time); without one, anything passes."""
    if expected is None:
        return
    scheme, _, presented = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.encode(), expected.encode()):
        raise Unauthorized("a valid bearer token is required (Authorization: Bearer <SPLITINFER_TOKEN>)")
