"""What the torch-free edge says when its cloud changed under it: other weights (a token now required:
``test_edge_lite_cloud_refusals.py``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from edge_lite.app import create_app
from edge_lite.settings import EdgeLiteSettings
from shared.models import LoadedModel, load_model
from shared.onnx_export import export_split
from splitinfer.samples import encode_image, synthetic_image

TINY = "tests.fixture_models:tiny_cnn"
JPEG = encode_image(synthetic_image(seed=4))
Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_model(TINY, "none")


@pytest.fixture(scope="module")
def export(loaded: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lite") / "stem"
    export_split(
        loaded.graph(), "stem", model=loaded.name, weights=loaded.digest, preprocessing=loaded.preprocessor.to_json()
    ).write(folder)
    return folder


@pytest.fixture
def lite(export: Path) -> Iterator[Callable[[Handler], TestClient]]:
    clients: list[TestClient] = []

    def build(handler: Handler) -> TestClient:
        settings = EdgeLiteSettings(onnx_dir=export, codec="fp32")
        client = TestClient(create_app(settings, cloud_transport=httpx.MockTransport(handler))).__enter__()
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


def _reply(status: int, document: dict[str, object], headers: dict[str, str] | None = None) -> httpx.Response:
    """A JSON reply the app reads as a stream, as it reads a real cloud's (MockTransport's replies built
    with ``json=`` are already read)."""
    body = json.dumps(document).encode()
    kinds = {"content-type": "application/json", "content-length": str(len(body)), **(headers or {})}
    return httpx.Response(status, headers=kinds, stream=httpx.ByteStream(body))


def test_a_cloud_with_other_weights_is_named_with_both_digests(
    lite: Callable[[Handler], TestClient], loaded: LoadedModel
) -> None:
    def other_weights(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/info":
            return _reply(200, {"model": loaded.name, "weights_digest": "sha256:0ther"})
        return _reply(409, {"detail": "payload is for weights x; this side has y"})

    client = lite(other_weights)
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert "sha256:0ther" in ready.json()["detail"] and loaded.digest in ready.json()["detail"]
    refused = client.post("/v1/classify", files={"image": ("a.jpg", JPEG)})
    assert refused.status_code == 502 and refused.json()["type"].endswith("/cloud-model-mismatch")
