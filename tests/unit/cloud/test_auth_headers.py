"""The cloud's bearer check reads the same Authorization header on every /v1 route: the first, as /v1/info
(FastAPI) did. /v1/tail read the last, so a request with two (a proxy that adds its own) was let through by
one route and refused by the other."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

from cloud_service import CloudSettings, create_app
from shared.models import load_model
from shared.protocol import encode_activations

TINY = "tests.fixture_models:tiny_cnn"
TOKEN = "s3cret-token"


@pytest.mark.parametrize(
    ("first", "second", "status"), [(TOKEN, "other", 200), ("other", TOKEN, 401)], ids=["valid-first", "valid-last"]
)
def test_every_route_reads_the_first_authorization_header(first: str, second: str, status: int) -> None:
    loaded = load_model(TINY, "none")
    cut = loaded.graph().cut("block")
    tensors = tuple(torch.zeros((1, *t.shape[1:])) for t in cut.tensors)
    payload = encode_activations(tensors, cut, model=TINY, weights=loaded.digest, codec="fp32")
    app = create_app(CloudSettings(model=TINY, weights="none", token=TOKEN))  # type: ignore[call-arg]
    auth = [("authorization", f"Bearer {first}"), ("authorization", f"Bearer {second}")]
    with TestClient(app) as client:
        info = client.get("/v1/info", headers=auth)
        tail = client.post(
            "/v1/tail", content=payload, headers=[*auth, ("content-type", "application/vnd.splitinfer+safetensors")]
        )
    assert (info.status_code, tail.status_code) == (status, status), (info.text[:200], tail.text[:200])
