"""Edges under test whose cloud is an in-process handler (``httpx.MockTransport``), their lifespans run."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import httpx
from fastapi.testclient import TestClient

from edge_service import EdgeSettings, create_app

__all__ = ["CloudHandler", "mock_cloud_edges"]

CloudHandler = Callable[[httpx.Request], httpx.Response]
"""What answers the edge's requests to its cloud."""


@contextmanager
def mock_cloud_edges(**defaults: object) -> Iterator[Callable[..., TestClient]]:
    """A factory of started edges: ``build(handler, **settings)`` is a client of an edge with ``defaults``
    and ``settings`` (these win) whose cloud is ``handler``; every edge is stopped when the block ends."""
    with ExitStack() as stack:

        def build(handler: CloudHandler, **settings: object) -> TestClient:
            settings = defaults | settings
            app = create_app(EdgeSettings(**settings), cloud_transport=httpx.MockTransport(handler))  # type: ignore[arg-type]
            return stack.enter_context(TestClient(app))

        yield build
