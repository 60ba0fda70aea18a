"""The demo page's routes in-process: the page and its assets name no other host; /v1/cuts and /v1/plan."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from edge_service import EdgeSettings, create_app


def _refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = EdgeSettings(weights="none", cut="output")  # type: ignore[call-arg]
    with TestClient(create_app(settings, cloud_transport=httpx.MockTransport(_refuse))) as test_client:
        yield test_client


def test_the_page_and_its_assets_load_nothing_from_elsewhere(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for name, kind in (("demo.js", "javascript"), ("demo.css", "text/css")):
        assert f'"/demo-assets/{name}"' in page.text
        asset = client.get(f"/demo-assets/{name}")
        assert asset.status_code == 200 and kind in asset.headers["content-type"]
        # NOTE: the only absolute URL allowed is SVG's namespace, which is a name, not a request.
        urls = set(re.findall(r"https?://[^\s\"'`)]+", asset.text)) - {"http://www.w3.org/2000/svg"}
        assert urls == set(), name
    assert re.findall(r"(?:src|href)=\"(https?:)?//", page.text) == []
    assert client.get("/demo-assets/../settings.py").status_code == 404
    assert client.get("/demo-assets/index.html").status_code == 404


def test_the_page_and_its_assets_forbid_inline_code_framing_and_sniffing(client: TestClient) -> None:
    """The page shows text other parties choose (class labels, a cloud's error details); it rendered them
    safely, but sent no policy: an injection anywhere would have run, and any site could frame the page."""
    for path in ("/", "/demo-assets/demo.js", "/demo-assets/demo.css"):
        headers = client.get(path).headers
        policy = dict(part.strip().split(" ", 1) for part in headers["content-security-policy"].split(";"))
        assert policy["default-src"] == "'self'" and "script-src" not in policy and "style-src" not in policy
        assert policy["frame-ancestors"] == "'none'" and policy["object-src"] == "'none'"
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
    assert 'style="' not in client.get("/").text  # NOTE: refused by the policy: styles come from demo.css


def test_cuts_lists_single_tensor_cuts_in_order_with_their_codecs(client: TestClient) -> None:
    body = client.get("/v1/cuts").json()
    names = [c["name"] for c in body["cuts"]]
    assert names[0] == "input" and names[-1] == "output" and "layer3" in names and "layer3.0.conv1" not in names
    assert [c["index"] for c in body["cuts"]] == sorted(c["index"] for c in body["cuts"])
    assert (body["cut"], body["codec"], body["profiles"]) == ("output", "none", False)
    assert "int8+zstd" in body["activation_codecs"] and "jpeg" in body["image_codecs"]
    every = client.get("/v1/cuts", params={"single": "false"}).json()["cuts"]
    assert len(every) > len(body["cuts"])


def test_plan_without_profiles_says_so_and_refuses_unitless_links(client: TestClient) -> None:
    body = client.get("/v1/plan").json()
    assert body["available"] is False and "--edge-profile" in body["reason"]
    response = client.get("/v1/plan", params={"bandwidth": "20"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert "a number and a unit are needed" in response.json()["detail"]
