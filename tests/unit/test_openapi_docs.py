"""OpenAPI documents every problem+json answer; /docs is Swagger UI from the package (works offline)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cloud_service.app import create_app as create_cloud
from cloud_service.settings import CloudSettings
from edge_service import EdgeSettings
from edge_service import create_app as create_edge

PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
# NOTE: 408 (BODY_TIMEOUT_S) and 500 (`model-failure`: a tail that fails, the edge's own at cut `output`) were
# missing from the routes that take a body, though the README says the schema documents every answer.
EXPECTED = {
    ("edge", "post", "/v1/classify"): {408, 413, 415, 422, 500, 502, 503, 504},
    ("edge", "post", "/v1/classify/batch"): {408, 413, 415, 422, 500, 502, 503, 504},
    ("edge", "get", "/v1/info"): {503},
    ("edge", "get", "/readyz"): {503},
    ("edge", "get", "/v1/cuts"): {422, 503},
    ("edge", "get", "/v1/plan"): {422, 503},
    ("cloud", "post", "/v1/tail"): {400, 401, 408, 409, 413, 415, 422, 500, 503, 504},
    ("cloud", "get", "/v1/info"): {401, 503},
    ("cloud", "get", "/readyz"): {503},
}


@pytest.fixture(scope="module")
def apps() -> dict[str, FastAPI]:
    # NOTE: no lifespan runs (no `with`): the schema and /docs need no model.
    return {
        "edge": create_edge(EdgeSettings(weights="none")),  # type: ignore[call-arg]
        "cloud": create_cloud(CloudSettings(weights="none")),  # type: ignore[call-arg]
    }


@pytest.mark.parametrize(("service", "method", "path"), sorted(EXPECTED))
def test_every_route_documents_its_problems(apps: dict[str, FastAPI], service: str, method: str, path: str) -> None:
    schema = apps[service].openapi()
    responses: dict[str, Any] = schema["paths"][path][method]["responses"]
    errors = {int(code) for code in responses if int(code) >= 400}
    assert errors == EXPECTED[(service, method, path)]
    for code in errors:
        assert responses[str(code)]["content"] == PROBLEM, code
    assert set(schema["components"]["schemas"]["Problem"]["required"]) == {"type", "title", "status", "detail"}
    assert "HTTPValidationError" not in schema["components"]["schemas"]


@pytest.mark.parametrize(("service", "model"), [("edge", "EdgeInfo"), ("cloud", "CloudInfo")])
def test_info_and_readyz_are_typed(apps: dict[str, FastAPI], service: str, model: str) -> None:
    paths = apps[service].openapi()["paths"]
    info = paths["/v1/info"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    ready = paths["/readyz"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert info == {"$ref": f"#/components/schemas/{model}"}
    assert ready == {"$ref": "#/components/schemas/ReadinessReport"}


@pytest.mark.parametrize("service", ["edge", "cloud"])
def test_docs_load_swagger_ui_from_the_service_itself(apps: dict[str, FastAPI], service: str) -> None:
    client = TestClient(apps[service])
    page = client.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower() and "https://" not in page.text.replace("https://fastapi", "")
    for asset, kind in (("swagger-ui-bundle.js", "javascript"), ("swagger-ui.css", "text/css")):
        assert f'"/docs/assets/{asset}"' in page.text
        response = client.get(f"/docs/assets/{asset}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
        assert len(response.content) > 100_000
    assert client.get("/redoc").status_code == 404
