"""``HEAD`` answered as ``GET`` is, without the body (RFC 9110 9.3.2), on every route that serves ``GET``.

FastAPI's routes accept only the methods they are declared with, so ``HEAD /healthz`` was a 405 (uptime
monitors and load balancers probe with ``HEAD``). Declaring ``HEAD`` per route would also put a second,
duplicate operation of each into the OpenAPI schema. :class:`HeadAsGetMiddleware` instead hands the app a
copy of the request's scope whose method is ``GET`` and drops the body of the answer: the status and the
headers (``Content-Length`` and ``Content-Type`` included) are the ``GET`` answer's. A route that does not
serve ``GET`` answers ``HEAD`` as it answers ``GET``: 405 with its ``Allow`` header (or 404).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["HeadAsGetMiddleware", "allow_with_head"]


def allow_with_head(allow: str) -> str:
    """An ``Allow`` header value that lists ``HEAD`` wherever it lists ``GET`` (what this middleware serves)."""
    methods = [method.strip() for method in allow.split(",") if method.strip()]
    if "GET" in methods and "HEAD" not in methods:
        methods.insert(methods.index("GET") + 1, "HEAD")
    return ", ".join(methods)


class HeadAsGetMiddleware:
    """Runs a ``HEAD`` request as ``GET`` and sends the answer's status and headers with an empty body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        # NOTE: a copy: the server reads the method of its own scope to know it must send no body.
        as_get = {**scope, "method": "GET"}
        ended = False

        async def send_head(message: Message) -> None:
            nonlocal ended
            kind = message["type"]
            if kind == "http.response.start":
                await send(message)
                return
            last = kind == "http.response.pathsend" or (kind == "http.response.body" and not message.get("more_body"))
            if last and not ended:
                ended = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        try:
            await self.app(as_get, receive, send_head)
        finally:
            # NOTE: what routing wrote into the scope (the matched route: the metrics label with it).
            for key, value in as_get.items():
                if key != "method":
                    scope[key] = value
