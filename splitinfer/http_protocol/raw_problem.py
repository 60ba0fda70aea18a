"""A problem+json refusal as the bytes of a whole HTTP/1.1 response, for a connection uvicorn's request cycle
does not own (a request head too large, a body in too many chunks, a request uvicorn cannot parse)."""

from __future__ import annotations

from service_core.problems import PROBLEM_MEDIA_TYPE, domain_problem
from shared.errors import SplitInferError

__all__ = ["raw_problem"]


def raw_problem(error: SplitInferError, reason: str) -> bytes:
    """``error``'s problem+json response as bytes to write on a connection uvicorn's cycle does not own
    (the body as :func:`service_core.problems.domain_problem` renders it), closing the connection."""
    body = bytes(domain_problem(error).body)
    head = f"HTTP/1.1 {error.status} {reason}\r\ncontent-type: {PROBLEM_MEDIA_TYPE}\r\ncontent-length: {len(body)}\r\n"
    return head.encode() + b"connection: close\r\n\r\n" + body
