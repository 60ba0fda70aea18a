"""The request metrics label FastAPI's own routes and the Swagger UI mount by their template, not ``unmatched``."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cloud_service.app import create_app as create_cloud
from cloud_service.settings import CloudSettings
from edge_service import EdgeSettings
from edge_service import create_app as create_edge

_SAMPLE = re.compile(r'^splitinfer_requests_total\{method="(\w+)",route="([^"]*)",status="(\d+)"\} (\S+)$', re.M)


def _app(service: str) -> FastAPI:
    # NOTE: no lifespan runs (no `with`): the docs, the schema and /metrics need no model.
    if service == "edge":
        return create_edge(EdgeSettings(weights="none"))  # type: ignore[call-arg]
    return create_cloud(CloudSettings(weights="none"))  # type: ignore[call-arg]


def _requests(client: TestClient) -> dict[tuple[str, str, str], float]:
    text = client.get("/metrics").text
    return {(route, method, status): float(count) for method, route, status, count in _SAMPLE.findall(text)}


@pytest.mark.parametrize("service", ["edge", "cloud"])
def test_docs_schema_and_assets_have_their_own_labels(service: str) -> None:
    client = TestClient(_app(service))
    for path, status in (
        ("/openapi.json", 200),
        ("/docs", 200),
        ("/docs/assets/swagger-ui.css", 200),
        ("/docs/assets/swagger-ui-bundle.js", 200),
        ("/docs/assets/no-such-file.js", 404),
        ("/docs/oauth2-redirect", 404),  # NOTE: not served (docs_url=None): unknown
        ("/redoc", 404),  # not served either
        ("/no/such/route", 404),
    ):
        assert client.get(path).status_code == status, path
    assert client.head("/openapi.json").status_code == 200
    assert client.post("/openapi.json").status_code == 405
    counted = _requests(client)
    assert counted[("/openapi.json", "GET", "200")] == 1
    assert counted[("/openapi.json", "HEAD", "200")] == 1
    assert counted[("/openapi.json", "POST", "405")] == 1
    assert counted[("/docs", "GET", "200")] == 1
    # NOTE: the mount is one label, whatever file under it was asked for
    assert counted[("/docs/assets", "GET", "200")] == 2
    assert counted[("/docs/assets", "GET", "404")] == 1
    assert counted[("unmatched", "GET", "404")] == 3
    assert not any(route.startswith("/docs/assets/") for route, _, _ in counted)
    assert ("unmatched", "GET", "200") not in counted
