"""HEAD answers what GET answers, without a body, on every GET route of both services (uptime monitors and
load balancers probe with HEAD); routes that do not serve GET do not start serving HEAD."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import BaseRoute

from cloud_service import CloudSettings
from cloud_service import create_app as create_cloud
from edge_service import EdgeSettings
from edge_service import create_app as create_edge

TINY = "tests.fixture_models:tiny_cnn"
# NOTE: a concrete path for each GET route with a path parameter (a new one fails the test until it is named).
EXAMPLES = {"/demo-assets/{name}": "/demo-assets/demo.js"}
ALSO_GET = ["/openapi.json", "/docs/assets/swagger-ui.css"]  # Starlette routes and mounts
CHANGES_BETWEEN_CALLS = {"/metrics"}  # its body counts the requests before it


def _refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


@pytest.fixture(scope="module", params=["edge", "cloud"])
def client(request: pytest.FixtureRequest) -> Iterator[TestClient]:
    if request.param == "edge":
        settings = EdgeSettings(model=TINY, weights="none", cut="output")  # type: ignore[call-arg]
        app = create_edge(settings, cloud_transport=httpx.MockTransport(_refuse))
    else:
        app = create_cloud(CloudSettings(model=TINY, weights="none"))  # type: ignore[call-arg]
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def _get_routes(routes: list[BaseRoute]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute) and "GET" in (route.methods or ()):
            yield route
        included = getattr(route, "original_router", None)  # NOTE: how FastAPI keeps an included router
        if included is not None:
            yield from _get_routes(included.routes)


def _get_paths(app: FastAPI) -> list[str]:
    paths = [EXAMPLES.get(route.path, route.path) for route in _get_routes(app.routes)]
    assert not [path for path in paths if "{" in path], "name an example path in EXAMPLES"
    documented = {path for path, operations in app.openapi()["paths"].items() if "get" in operations}
    assert documented <= set(paths)
    return paths + ALSO_GET


def _comparable(response: Any) -> dict[str, str]:  # NOTE: TestClient answers with its own Response type
    return {name: value for name, value in response.headers.items() if name not in ("x-request-id", "date")}


def test_head_answers_what_get_answers_without_a_body(client: TestClient) -> None:
    app = client.app
    assert isinstance(app, FastAPI)
    paths = _get_paths(app)
    assert {"/healthz", "/readyz", "/metrics", "/v1/info", "/docs"} <= set(paths)
    for path in paths:
        head = client.head(path)
        get = client.get(path)
        assert head.status_code == get.status_code, path
        assert get.status_code < 500, (path, get.text)
        assert head.content == b"", path
        if path in CHANGES_BETWEEN_CALLS:
            assert head.headers["content-type"] == get.headers["content-type"]
            assert int(head.headers["content-length"]) > 0
        else:
            assert _comparable(head) == _comparable(get), path
            assert int(head.headers["content-length"]) == len(get.content), path


def test_head_is_counted_as_head(client: TestClient) -> None:
    client.head("/healthz")
    metrics = client.get("/metrics").text
    assert 'splitinfer_requests_total{method="HEAD",route="/healthz",status="200"}' in metrics


def test_routes_without_get_do_not_serve_head(client: TestClient) -> None:
    app = client.app
    assert isinstance(app, FastAPI)
    post_only = ["/v1/classify", "/v1/classify/batch"] if "edge" in app.title.lower() else ["/v1/tail"]
    for path in post_only:  # /v1/tail is a direct route (service_core.direct_routes), outside FastAPI's router
        response = client.head(path)
        assert response.status_code == 405, path
        assert response.headers["allow"] == "POST"
        assert response.headers["content-type"] == "application/problem+json"
        assert response.content == b""


def test_a_get_routes_405_allows_get_and_head(client: TestClient) -> None:
    response = client.post("/healthz")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert response.json()["status"] == 405


def test_unknown_paths_are_404_for_head(client: TestClient) -> None:
    response = client.head("/no-such-route")
    assert response.status_code == 404 and response.content == b""


def test_openapi_has_no_head_operations_and_unique_ids(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    methods = {method for operations in schema["paths"].values() for method in operations}
    assert "head" not in methods
    ids = Counter(
        operation["operationId"]
        for operations in schema["paths"].values()
        for operation in operations.values()
        if "operationId" in operation
    )
    assert [name for name, count in ids.items() if count > 1] == []
