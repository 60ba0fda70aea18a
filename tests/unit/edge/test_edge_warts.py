"""Small API warts a newcomer met (issue 19): each answer now says what happened."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from edge_service import EdgeSettings, create_app
from shared.images import MAX_NAME_CHARS, display_name
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


def test_a_bad_image_in_a_batch_is_named_by_position_and_file_name(client: TestClient) -> None:
    files = [("images", ("a.jpg", JPEG)), ("images", ("cat.png", b"not an image")), ("images", ("c.jpg", JPEG))]
    response = client.post("/v1/classify/batch", files=files)
    assert response.status_code == 415
    assert response.json()["detail"] == (
        'image 1 ("cat.png") (0-based) of 3: not an image in an accepted format (JPEG, PNG, WEBP)'
    )


def test_an_uploaded_file_name_is_quoted_safely(client: TestClient) -> None:
    """The name is untrusted: only its last path component, no control or bidi characters, bounded."""
    hostile = "../../etc/evil\x1b[31m\u202egnp.exe" + "x" * 500 + ".png"
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="a.jpg"\r\n\r\n'.encode()
        + JPEG
        + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{hostile}"\r\n\r\n'.encode()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    response = client.post("/v1/classify/batch", content=body, headers=headers)
    assert response.status_code == 422
    shown = "evil_[31m_gnp.exe" + "x" * (MAX_NAME_CHARS - 3 - 17) + "..."
    assert response.json()["detail"] == f'image 1 ("{shown}") (0-based) of 2: the image is empty (0 bytes)'
    assert len(shown) == MAX_NAME_CHARS


def test_display_name_drops_paths_quotes_and_controls() -> None:
    assert display_name("C:\\Users\\me\\cat.png") == "cat.png"
    assert display_name('a"b\r\nc\u200bd.png') == "a_b__c_d.png"
    assert display_name("chat-\u00e9t\u00e9.png") == "chat-\u00e9t\u00e9.png"
    assert display_name("y" * 10_000) == "y" * (MAX_NAME_CHARS - 3) + "..."


@pytest.mark.parametrize(
    ("count", "detail"),
    [(5, "5 images exceed the batch limit of 4"), (6, "more than 4 images; the batch limit is 4")],
)
def test_too_many_images_is_413_however_many(client: TestClient, count: int, detail: str) -> None:
    """One over the limit and two over it (past the multipart parser's own file limit) get the same 413."""
    response = client.post("/v1/classify/batch", files=[("images", (f"{i}.jpg", JPEG)) for i in range(count)])
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == detail


@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/classify/"), ("GET", "/v1/info/"), ("GET", "/readyz/")])
def test_a_trailing_slash_is_a_404_problem_not_an_empty_redirect(client: TestClient, method: str, path: str) -> None:
    response = client.request(method, path, follow_redirects=False)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 404
    assert response.json()["detail"] == f"no route {path}; drop the trailing slash: {path.rstrip('/')}"
