"""What the torch-free edge says when the cloud refuses it: a wrong or missing token is named as such on
``/readyz`` and on classify (as the torch edge names it), not blamed on the model."""

from __future__ import annotations

import json
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
