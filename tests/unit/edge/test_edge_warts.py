"""Small API warts a newcomer met (issue 19): each answer now says what happened."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from edge_service import EdgeSettings, create_app
from splitinfer.samples import encode_image, synthetic_image

JPEG = encode_image(synthetic_image(seed=3))


def _refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = EdgeSettings(weights="none", cut="output", max_batch_size=4)  # type: ignore[call-arg]
    with TestClient(create_app(settings, cloud_transport=httpx.MockTransport(_refuse))) as test_client:
        yield test_client


def test_an_unencoded_plus_in_the_codec_gets_a_hint(client: TestClient) -> None:
    response = client.post("/v1/classify?cut=layer3&codec=int8+zstd", files={"image": ("a.jpg", JPEG)})
    assert response.status_code == 422
    assert "a '+' in a URL query string means a space: write codec=int8%2Bzstd" in response.json()["detail"]


def test_cut_output_reports_no_codec(client: TestClient) -> None:
    body = client.post("/v1/classify", files={"image": ("a.jpg", JPEG)}).json()
    assert (body["cut"], body["codec"], body["payload_bytes"], body["completed_on"]) == ("output", "none", 0, "edge")
    assert client.get("/v1/info").json()["codec"] == "none"


def test_a_bad_image_in_a_batch_is_named_by_position(client: TestClient) -> None:
    files = [("images", ("a.jpg", JPEG)), ("images", ("b.jpg", b"not an image")), ("images", ("c.jpg", JPEG))]
    response = client.post("/v1/classify/batch", files=files)
    assert response.status_code == 415
    assert response.json()["detail"].startswith("image 1 (0-based) of 3: not an image")


@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/classify/"), ("GET", "/v1/info/"), ("GET", "/readyz/")])
def test_a_trailing_slash_is_a_404_problem_not_an_empty_redirect(client: TestClient, method: str, path: str) -> None:
    response = client.request(method, path, follow_redirects=False)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 404
