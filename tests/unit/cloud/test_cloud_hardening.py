"""Issue 14, in-process: the cloud against malformed headers, overflowing activations and failing tails."""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Iterator

import pytest
import torch
from fastapi.testclient import TestClient

from cloud_service import CloudSettings, create_app
from cloud_service.runtime import CloudModel
from shared.errors import SplitInferError
from shared.models import load_model
from shared.protocol import encode_activations
from shared.splitting import ModelGraph
from shared.wire import MEDIA_TYPE

TINY = "tests.fixture_models:tiny_cnn"
HEADERS = {"Content-Type": MEDIA_TYPE}


@pytest.fixture(scope="module")
def cloud() -> Iterator[TestClient]:
    with TestClient(create_app(CloudSettings(model=TINY, weights="none")), raise_server_exceptions=False) as client:
        yield client


def _container(header: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header


def _payload(value: float) -> bytes:
    loaded = load_model(TINY, "none")
    cut = ModelGraph(loaded.module, loaded.input_shape).cut("stem")
    tensors = (torch.full((1, *cut.tensors[0].shape[1:]), value),)
    return encode_activations(tensors, cut, model=TINY, weights=loaded.digest, codec="fp32")


@pytest.mark.parametrize(
    "header",
    [
        b"[" * 30_000 + b"]" * 30_000,
        b'{"__metadata__": {}, "t": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 0]}}',
        "tensor-list",
    ],
    ids=["nested-30000-deep", "5000-digit-int", "nested-tensor-list"],
)
def test_6_malformed_headers_are_400_and_the_connection_stays_usable(cloud: TestClient, header: bytes | str) -> None:
    if header == "tensor-list":  # the nesting inside the metadata's own JSON string
        metadata = {"format": "splitinfer", "version": "1", "kind": "activations", "model": TINY, "cut": "stem"}
        metadata |= {
            "weights": load_model(TINY, "none").digest,
            "codec": "fp32",
            "tensors": "[" * 30_000 + "]" * 30_000,
        }
        header = json.dumps({"__metadata__": metadata}).encode()
    assert isinstance(header, bytes)
    response = cloud.post("/v1/tail", content=_container(header), headers=HEADERS)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert cloud.post("/v1/tail", content=_payload(0.5), headers=HEADERS).status_code == 200


@pytest.mark.parametrize("accept", [MEDIA_TYPE, "application/json"])
def test_9_logits_that_overflow_are_a_typed_422_not_nan_on_the_wire(cloud: TestClient, accept: str) -> None:
    response = cloud.post("/v1/tail", content=_payload(3e38), headers={**HEADERS, "Accept": accept})
    assert response.status_code == 422, response.text
    assert response.json()["type"].endswith("/non-finite-output")


def test_12_a_failing_tail_is_ours_and_out_of_memory_asks_for_a_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    model = CloudModel(load_model(TINY, "none"))
    tensors = (torch.ones(1, 8, 112, 112),)

    def failing(error: Exception) -> object:
        def tail(*_: torch.Tensor) -> torch.Tensor:
            raise error

        return tail

    monkeypatch.setattr(model, "tail", lambda cut: failing(RuntimeError("an internal assert")))
    with pytest.raises(SplitInferError) as failed:
        model.run("stem", [tensors])
    assert failed.value.status == 500  # ours (ModelFailure), not the client's 422
    monkeypatch.setattr(model, "tail", lambda cut: failing(torch.OutOfMemoryError("CUDA out of memory")))
    with pytest.raises(SplitInferError) as oom:
        model.run("stem", [tensors])
    assert oom.value.status == 503 and oom.value.retry_after is not None


def test_12_load_model_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    load_model(TINY, "none")
    assert torch.equal(torch.rand(4), expected)
    assert load_model(TINY, "none").digest == load_model(TINY, "none").digest  # still reproducible


def test_the_access_log_says_why_a_tail_was_refused(cloud: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    """/v1/tail is served ahead of FastAPI's router (service_core.direct_routes): its refusals are logged with
    their problem too, as an operator needs to tell an edge's bad payloads from other 400s."""
    with caplog.at_level(logging.INFO, logger="splitinfer.access"):
        response = cloud.post("/v1/tail", content=b"\x00" * 64, headers={"content-type": MEDIA_TYPE})
    assert response.status_code == 400
    lines = [r.getMessage() for r in caplog.records if r.name == "splitinfer.access"]
    [line] = [line for line in lines if "/v1/tail" in line]
    assert "status=400" in line and f"problem={response.json()['type'].rsplit('/', 1)[1]}" in line
    assert "detail=" in line
