"""OpenAPI that tells the truth about errors, and Swagger UI served from the package (``/docs`` offline).

- :func:`problem_responses` documents problem+json answers on a route (``responses=problem_responses(413, 415)``);
- :func:`install_openapi` moves every documented error (FastAPI's default 422 included) to
  ``application/problem+json`` with the :class:`Problem` schema, and serves ``/docs`` with the Swagger UI
  files shipped in ``service_core/static/swagger-ui`` (swagger-ui-dist, Apache-2.0; no CDN).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from importlib import resources
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from service_core.direct_routes import DirectRoute
from service_core.problems import PROBLEM_MEDIA_TYPE

__all__ = ["DOCS_ASSETS", "Problem", "ReadinessReport", "install_openapi", "operation_problems", "problem_responses"]

DOCS_ASSETS = "/docs/assets"

_MEANING = {
    400: "Malformed request (for example a wire payload that cannot be parsed).",
    401: "Missing or wrong bearer token.",
    404: "No such route.",
    408: "The request body did not arrive within BODY_TIMEOUT_S.",
    409: "The payload is for another model, weights or cut.",
    413: "The body, an image, a tensor or a batch is over its limit.",
    415: "Content type, image format, codec or dtype not accepted.",
    422: "Well-formed but unusable (query parameters, an undecodable image, a bad tensor).",
    500: "Ours: the model failed on valid input (model-failure), or a bug (internal, logged).",
    502: "The cloud answered with something unusable.",
    503: "Not ready, draining, overloaded (with Retry-After) or the cloud is unreachable.",
    504: "The cloud (or the edge's own part) did not finish in time.",
}


class Problem(BaseModel):
    """An RFC 9457 problem: every error either service returns."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="A URI naming the kind of problem (about:blank for plain HTTP errors).")
    title: str = Field(description="A short summary of the kind of problem.")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="What went wrong with this request, and what to do about it.")


class ReadinessReport(BaseModel):
    """``/readyz`` when the service accepts work (otherwise a 503 problem)."""

    model_config = ConfigDict(extra="allow")

    status: Literal["ready"]
    model: str | None = Field(None, description="The model served.")
    weights_digest: str | None = Field(None, description="sha256 of the weights.")
    cloud: str | None = Field(None, description="Edge only: the cloud's state (ok, not needed, or fallback).")


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries documenting ``statuses`` as problem+json answers."""
    return {status: {"model": Problem, "description": _MEANING.get(status, "An error.")} for status in statuses}


def operation_problems(*statuses: int) -> dict[str, dict[str, Any]]:
    """The same, as raw OpenAPI ``responses`` entries (for a DirectRoute's operation)."""
    return {str(status): {"description": _MEANING.get(status, "An error.")} for status in statuses}


def _problem_content(schema_ref: dict[str, Any]) -> dict[str, Any]:
    return {PROBLEM_MEDIA_TYPE: {"schema": schema_ref}}


def _rewrite_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Every 4xx/5xx response of every operation as problem+json with the Problem schema."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault("Problem", Problem.model_json_schema(ref_template="#/components/schemas/{model}"))
    ref = {"$ref": "#/components/schemas/Problem"}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for code, response in operation.get("responses", {}).items():
                if code.isdigit() and int(code) >= 400:
                    response["content"] = _problem_content(ref)
                    if code == "422":
                        response["description"] = _MEANING[422]
    text = repr(schema.get("paths", {}))
    for unused in ("HTTPValidationError", "ValidationError"):
        if f"#/components/schemas/{unused}'" not in text:
            components.pop(unused, None)
    return schema


def _swagger_files() -> Any:
    return resources.files("service_core") / "static" / "swagger-ui"


def install_openapi(app: FastAPI, direct_routes: Sequence[DirectRoute] = ()) -> None:
    """Problem+json in the schema, with the direct routes' operations; ``/docs`` from packaged Swagger UI
    files (``docs_url=None`` on the app)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for route in direct_routes:
                schema.setdefault("paths", {}).setdefault(route.path, {})[route.method.lower()] = copy.deepcopy(
                    route.operation
                )
            app.openapi_schema = _rewrite_errors(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(_swagger_files())), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )
