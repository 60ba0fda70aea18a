"""RFC 9457 problem details: every error either service returns is rendered here, once."""

from __future__ import annotations

import json
import logging
import math
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match
from starlette.types import Scope

from service_core.head_requests import allow_with_head
from shared.errors import ClientClosedRequest, SplitInferError

__all__ = [
    "PROBLEM_MEDIA_TYPE",
    "domain_problem",
    "install_problem_handlers",
    "problem_response",
    "trailing_slash_detail",
]

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
_TYPE_BASE = "https://split-inference.dev/problems/"
_LOGGED_DETAIL_CHARS = 300


def problem_response(
    status: int,
    title: str,
    detail: str,
    *,
    slug: str | None = None,
    retry_after: float | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": _TYPE_BASE + slug if slug else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        **(extra or {}),
    }
    headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after is not None else None
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def domain_problem(exc: SplitInferError, scope: Scope | None = None) -> JSONResponse:
    """The problem+json response of a domain error (also for middleware, which runs outside the handlers).
    With the request's ``scope``, its access-log line names the problem and its detail (one line: quoted)."""
    if scope is not None:
        fields = scope.setdefault("state", {}).setdefault("log_fields", {})
        fields["problem"] = exc.slug
        fields["detail"] = json.dumps(exc.detail[:_LOGGED_DETAIL_CHARS])
    response = problem_response(exc.status, exc.title, exc.detail, slug=exc.slug, retry_after=exc.retry_after)
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="split-inference"'
    return response


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    return domain_problem(cast(SplitInferError, exc), request.scope)  # registered for this type only


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    exc = cast(RequestValidationError, exc)  # registered for this type only
    problems = "; ".join(
        f"{'.'.join(str(p) for p in error.get('loc', ()))}: {error.get('msg', '')}" for error in exc.errors()
    )
    return problem_response(422, "Invalid request", problems, slug="invalid-request")


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    exc = cast(StarletteHTTPException, exc)  # registered for this type only
    detail = str(exc.detail)
    if exc.status_code == 404:
        detail = _trailing_slash_hint(request) or detail
    response = problem_response(exc.status_code, _reason(exc.status_code), detail)
    for name, value in (exc.headers or {}).items():
        # NOTE: the router's 405 names the methods the route accepts (RFC 9110 requires Allow there);
        # HEAD is served wherever GET is (service_core.head_requests).
        response.headers[name] = allow_with_head(value) if name.lower() == "allow" else value
    return response


def _trailing_slash_hint(request: Request) -> str | None:
    """For ``/v1/classify/``: name the route without the slash (no redirect: a POST body would be lost)."""
    path = request.url.path
    stripped = path.rstrip("/")
    if not stripped or stripped == path or len(path) > 200:
        return None
    scope = {**request.scope, "path": stripped}
    if not any(route.matches(scope)[0] is not Match.NONE for route in request.app.router.routes):
        return None
    return trailing_slash_detail(path, stripped)


def trailing_slash_detail(path: str, stripped: str) -> str:
    """The 404's detail for a route asked for with a trailing slash (FastAPI's routes and the direct ones)."""
    return f"no route {path}; drop the trailing slash: {stripped}"


async def _client_disconnect(request: Request, exc: Exception) -> JSONResponse:
    # NOTE: nobody reads this answer; it gives the access log and the metrics a status that says what
    # happened (499, the client left) instead of a 500 with a traceback.
    logger.info("client disconnected during %s %s", request.method, request.url.path)
    return domain_problem(
        ClientClosedRequest("the client closed the connection before its request was read"), request.scope
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(500, "Internal error", "an unexpected error occurred; see the server log", slug="internal")


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(SplitInferError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnect)
    app.add_exception_handler(Exception, _unexpected_error)
