"""Hot endpoints served as plain ASGI apps, ahead of FastAPI's routing.

A request through FastAPI's router builds a ``Request``, solves dependencies, and passes the exception
and exit-stack middleware twice: on a cloud whose tail is one linear layer that is a large share of the
request. A :class:`DirectRoute` is dispatched by path from the innermost middleware instead: request ids,
metrics, the access log, admission and the body limit still wrap it (they are outside), its errors still
render as problem+json (here, once), and its OpenAPI operation is merged into the app's schema.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service_core.head_requests import allow_with_head
from service_core.problems import domain_problem, problem_response, trailing_slash_detail
from shared.errors import SplitInferError

__all__ = ["DirectRoute", "DirectRoutesMiddleware"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DirectRoute:
    """``method path`` served by ``app`` (a plain ASGI app that may raise :class:`SplitInferError` before it
    starts its response), documented in OpenAPI by ``operation``."""

    path: str
    app: ASGIApp
    operation: dict[str, Any] = field(default_factory=dict)
    method: str = "POST"


class DirectRoutesMiddleware:
    """Serves the direct routes; every other request goes on to FastAPI."""

    def __init__(self, app: ASGIApp, routes: Sequence[DirectRoute]) -> None:
        self.app = app
        self.routes = {route.path: route for route in routes}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # NOTE: lifespan and websocket scopes have no path to route
            await self.app(scope, receive, send)
            return
        route = self.routes.get(scope["path"])
        if route is None:
            stripped = scope["path"].rstrip("/")
            if stripped != scope["path"] and stripped in self.routes:
                # NOTE: as FastAPI's routes answer it (service_core.problems): a 404 naming the route, no redirect.
                missing = problem_response(404, "Not Found", trailing_slash_detail(scope["path"], stripped))
                await missing(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        scope["route"] = route  # NOTE: what the metrics label with (route.path), as for FastAPI's routes
        if scope["method"] != route.method:
            refused = problem_response(405, "Method Not Allowed", f"{route.path} accepts {route.method} only")
            refused.headers["Allow"] = allow_with_head(route.method)
            await refused(scope, receive, send)
            return
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await route.app(scope, receive, send_tracked)
        except SplitInferError as exc:
            if started:
                raise
            await domain_problem(exc, scope)(scope, receive, send)
        except Exception:
            if started:
                raise
            logger.exception("unhandled error on %s %s", scope["method"], route.path)
            failed = problem_response(
                500, "Internal error", "an unexpected error occurred; see the server log", slug="internal"
            )
            await failed(scope, receive, send)
