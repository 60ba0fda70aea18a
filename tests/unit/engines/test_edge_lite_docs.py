"""The torch-free edge's API documentation and route spelling, as the torch services have them: ``/docs`` from
the Swagger UI files shipped in the package (no other host), no ``/redoc``, and a trailing slash a 404 problem
naming the route (not a 307 to it)."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from edge_lite.app import create_app
from edge_lite.settings import EdgeLiteSettings


def test_docs_are_served_from_the_package_and_name_no_other_host(tiny_export: Path) -> None:
    """FastAPI's default /docs and /redoc load their script and style sheet from a CDN: in a browser that
    opens the edge's /docs, a third party's script, or nothing at all offline."""
    with TestClient(create_app(EdgeLiteSettings(onnx_dir=tiny_export))) as client:
        page = client.get("/docs")
        assert page.status_code == 200
        assert re.findall(r"(?:src|href)=['\"](?:https?:)?//", page.text) == []
        for asset in re.findall(r"['\"](/docs/assets/[^'\"]+)['\"]", page.text):
            assert client.get(asset).status_code == 200, asset
        assert client.get("/redoc").status_code == 404
        paths = client.get("/openapi.json").json()["paths"]
        assert "/v1/classify" in paths and paths["/v1/classify"]["post"]["responses"]["422"]["content"].keys() == {
            "application/problem+json"
        }


def test_a_trailing_slash_is_a_404_naming_the_route(tiny_export: Path) -> None:
    with TestClient(create_app(EdgeLiteSettings(onnx_dir=tiny_export))) as client:
        response = client.post(
            "/v1/classify/", content=b"x", headers={"content-type": "image/png"}, follow_redirects=False
        )
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
        assert "drop the trailing slash: /v1/classify" in response.json()["detail"]
