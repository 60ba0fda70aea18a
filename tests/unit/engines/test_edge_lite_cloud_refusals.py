"""What the torch-free edge says when the cloud refuses it: a wrong or missing token is named as such on
``/readyz`` and on classify (as the torch edge names it), not blamed on the model."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from edge_lite.app import EdgeLiteState, create_app
from edge_lite.settings import EdgeLiteSettings
from splitinfer.samples import encode_image, synthetic_image

_UNAUTHORIZED = {
    "type": "https://split-inference.dev/problems/unauthorized",
    "title": "Unauthorized",
    "status": 401,
    "detail": "a valid bearer token is required (Authorization: Bearer <SPLITINFER_TOKEN>)",
}


def _refusing(status: int, body: dict[str, object]) -> httpx.AsyncClient:
    content = json.dumps(body).encode()
    headers = {"content-type": "application/problem+json"}

    def answer(_: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers=headers, stream=httpx.ByteStream(content))

    return httpx.AsyncClient(base_url="http://cloud", transport=httpx.MockTransport(answer))


def test_a_cloud_that_refuses_the_token_is_named_on_readyz_and_classify(tiny_export: Path) -> None:
    """/readyz read the cloud's 401 problem as its /v1/info, and said 'the cloud serves another model or
    other weights than this edge's export'; classify said 'the cloud answered 401'."""
    with TestClient(create_app(EdgeLiteSettings(onnx_dir=tiny_export))) as client:
        state: EdgeLiteState = client.app.state.edge  # type: ignore[attr-defined]
        state.client = _refusing(401, _UNAUTHORIZED)
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "401" in ready.json()["detail"] and "SPLITINFER_TOKEN" in ready.json()["detail"]
        assert "another model" not in ready.json()["detail"]
        image = encode_image(synthetic_image())
        classified = client.post("/v1/classify", content=image, headers={"content-type": "image/jpeg"})
        assert classified.status_code == 502
        assert "SPLITINFER_TOKEN" in classified.json()["detail"]


def test_a_cloud_that_answers_info_with_an_error_is_not_ready_with_its_status(tiny_export: Path) -> None:
    with TestClient(create_app(EdgeLiteSettings(onnx_dir=tiny_export))) as client:
        state: EdgeLiteState = client.app.state.edge  # type: ignore[attr-defined]
        state.client = _refusing(500, {"model": "x", "weights_digest": "y"})
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "500" in ready.json()["detail"]


def test_a_cloud_reply_is_read_no_further_than_logits_can_be(tiny_export: Path) -> None:
    """The reply to one image is a logits header and ``num_classes`` floats (40 bytes here): a cloud that sends
    more is refused once it has sent that much and a header's worth. Before, up to 64 MiB were read into
    memory first, per request (MAX_CONCURRENT_REQUESTS at once: 4 GiB on a device with 1-2 GB)."""
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(160):  # NOTE: 10 MiB
            sent += 64 * 1024
            yield b"\0" * (64 * 1024)

    def answer(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "application/octet-stream"}, content=endless())

    with TestClient(create_app(EdgeLiteSettings(onnx_dir=tiny_export))) as client:
        state: EdgeLiteState = client.app.state.edge  # type: ignore[attr-defined]
        state.client = httpx.AsyncClient(base_url="http://cloud", transport=httpx.MockTransport(answer))
        image = encode_image(synthetic_image())
        response = client.post("/v1/classify", content=image, headers={"content-type": "image/jpeg"})
        assert response.status_code == 502, response.text
        assert sent <= 256 * 1024, sent


def _failing(error: type[httpx.TransportError]) -> httpx.AsyncClient:
    def answer(request: httpx.Request) -> httpx.Response:
        raise error("Server disconnected", request=request)

    return httpx.AsyncClient(base_url="http://cloud", transport=httpx.MockTransport(answer))


def test_a_cloud_that_drops_plain_http_is_asked_whether_it_serves_https(tiny_export: Path) -> None:
    """A cloud that serves HTTPS drops a plain-HTTP connection without a reply: with an http:// CLOUD_URL the
    edge says what that most often means; a refused connection (nothing listening) does not."""
    hint = "CLOUD_URL must start with https://"
    with TestClient(create_app(EdgeLiteSettings(onnx_dir=tiny_export, cloud_url="http://127.0.0.1:9"))) as client:
        state: EdgeLiteState = client.app.state.edge  # type: ignore[attr-defined]
        image = encode_image(synthetic_image())
        for error, hinted in ((httpx.RemoteProtocolError, True), (httpx.ReadError, True), (httpx.ConnectError, False)):
            state.client = _failing(error)
            ready = client.get("/readyz")
            classified = client.post("/v1/classify", content=image, headers={"content-type": "image/jpeg"})
            assert (ready.status_code, classified.status_code) == (503, 503), error
            assert (hint in ready.json()["detail"], hint in classified.json()["detail"]) == (hinted, hinted), error


def test_a_cloud_that_times_out_is_a_cloud_timeout(tiny_export: Path) -> None:
    """Ray Serve's proxy answers a text/plain 408 when its request_timeout_s passes; edge_lite called it (and a
    504) 'the cloud answered 408', a 502, where the torch edge says 504 cloud-timeout."""

    def timing_out(status: int) -> httpx.AsyncClient:
        def answer(_: httpx.Request) -> httpx.Response:
            return httpx.Response(status, headers={"content-type": "text/plain"}, stream=httpx.ByteStream(b"timed out"))

        return httpx.AsyncClient(base_url="http://cloud", transport=httpx.MockTransport(answer))

    with TestClient(create_app(EdgeLiteSettings(onnx_dir=tiny_export))) as client:
        state: EdgeLiteState = client.app.state.edge  # type: ignore[attr-defined]
        image = encode_image(synthetic_image())
        for status in (408, 504):
            state.client = timing_out(status)
            classified = client.post("/v1/classify", content=image, headers={"content-type": "image/jpeg"})
            assert classified.status_code == 504, (status, classified.text)
            assert classified.json()["type"].endswith("/cloud-timeout") and "timed out" in classified.json()["detail"]
