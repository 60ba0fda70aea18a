"""The edge app in-process against a faked cloud (httpx.MockTransport): error translation and fallback."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from edge_service import EdgeSettings, create_app
from shared.models import load_model
from shared.preprocessing import decode_image
from shared.protocol import encode_logits
from splitinfer.samples import encode_image, synthetic_image
from tests.support.edge_clients import mock_cloud_edges

Handler = Callable[[httpx.Request], httpx.Response]
JPEG = encode_image(synthetic_image(seed=3))


@pytest.fixture(scope="module")
def reference() -> tuple[str, torch.Tensor]:
    loaded = load_model("resnet18", "none")
    with torch.no_grad():
        return loaded.digest, loaded.module(loaded.preprocessor.batch([decode_image(JPEG)]))


@pytest.fixture
def edge() -> Iterator[Callable[..., TestClient]]:
    with mock_cloud_edges(weights="none", cut="layer3", read_timeout_s=1.0) as build:
        yield build


def _refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def _time_out(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("read timed out", request=request)


def _classify(client: TestClient) -> httpx.Response:
    return client.post("/v1/classify?logits=true", files={"image": ("a.jpg", JPEG)})


@pytest.mark.parametrize(
    ("handler", "status", "title"),
    [
        (_refuse, 503, "Cloud unavailable"),
        (_time_out, 504, "Cloud timeout"),
        (lambda r: httpx.Response(200, content=b"not a payload"), 502, "Bad gateway"),
        (lambda r: httpx.Response(500, json={"detail": "boom"}), 502, "Bad gateway"),
        # NOTE: what Ray Serve's proxy answers itself (text/plain): its request timeout, and a replica that died
        (lambda r: httpx.Response(408, text="Request 1 timed out after 60.0s."), 504, "Cloud timeout"),
        (lambda r: httpx.Response(500, text="Internal Server Error"), 502, "Bad gateway"),
        # NOTE: a cloud serving other weights is ours to fix, not the client's: 502 (it relayed the 409)
        (lambda r: httpx.Response(409, json={"detail": "payload is for weights x"}), 502, "Cloud model mismatch"),
        (lambda r: httpx.Response(503, json={"detail": "x"}, headers={"Retry-After": "1"}), 503, "Cloud unavailable"),
    ],
)  # fmt: skip
def test_cloud_failures_become_problems(
    edge: Callable[..., TestClient], handler: Handler, status: int, title: str
) -> None:
    response = _classify(edge(handler))
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["title"] == title


def test_wrong_shape_logits_from_the_cloud_are_a_bad_gateway(
    edge: Callable[..., TestClient], reference: tuple[str, torch.Tensor]
) -> None:
    digest, _ = reference
    wrong = encode_logits(torch.zeros(1, 10), model="resnet18", weights=digest, cut="layer3")
    response = _classify(edge(lambda r: httpx.Response(200, content=wrong)))
    assert response.status_code == 502
    assert "logits: float32[B, 1000]" in response.json()["detail"]


def _other_weights(request: httpx.Request) -> httpx.Response:
    return httpx.Response(409, json={"detail": "payload is for weights sha256:aa; this side has sha256:bb"})


@pytest.mark.parametrize(
    "handler", [_refuse, _time_out, lambda r: httpx.Response(200, content=b"junk"), _other_weights]
)
def test_local_fallback_finishes_on_the_edge(
    edge: Callable[..., TestClient], handler: Handler, reference: tuple[str, torch.Tensor]
) -> None:
    _, expected = reference
    response = _classify(edge(handler, fallback="local"))
    assert response.status_code == 200
    assert response.json()["completed_on"] == "edge"
    assert float((torch.tensor(response.json()["logits"]) - expected[0]).abs().max()) <= 1e-4


def test_readiness_reports_an_unreachable_cloud(edge: Callable[..., TestClient]) -> None:
    response = edge(_refuse).get("/readyz")
    assert response.status_code == 503
    assert "cloud not ready" in response.json()["detail"]


def _cloud_with_other_weights(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/v1/info":
        return httpx.Response(200, json={"model": "resnet18", "weights_digest": "sha256:other"})
    return _other_weights(request)


def test_a_cloud_with_other_weights_is_named_and_fallback_local_serves_meanwhile(
    edge: Callable[..., TestClient],
) -> None:
    """The cloud restarted with other weights: with fallback none, /readyz (503) and every request (502) name
    the mismatch; with fallback local the edge stays ready, says why it falls back, and answers from the edge
    (it relayed the cloud's 409 to every client, and /readyz said 503 although the edge could serve)."""
    strict = edge(_cloud_with_other_weights)
    ready = strict.get("/readyz")
    assert ready.status_code == 503 and "model mismatch" in ready.json()["detail"]
    refused = _classify(strict)
    assert refused.status_code == 502 and "weights" in refused.json()["detail"]
    assert refused.json()["type"].endswith("/cloud-model-mismatch")
    local = edge(_cloud_with_other_weights, fallback="local")
    ready = local.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert "model mismatch" in ready.json()["cloud"] and "falling back to local" in ready.json()["cloud"]
    answered = _classify(local)
    assert answered.status_code == 200 and answered.json()["completed_on"] == "edge"


def test_a_bad_cut_or_codec_refuses_to_start() -> None:
    with (
        pytest.raises(ValueError, match="unknown cut 'layer9'"),
        TestClient(create_app(EdgeSettings(weights="none", cut="layer9"))),
    ):
        pass
    with (
        pytest.raises(ValueError, match="codec 'png' does not fit cut 'layer3'"),
        TestClient(create_app(EdgeSettings(weights="none", cut="layer3", codec="png"))),
    ):
        pass
    with pytest.raises(ValueError, match=r"weights file 'missing\.pt' does not exist"):
        EdgeSettings(weights="missing.pt")
    with pytest.raises(ValueError, match="unknown codec 'zip'"):
        EdgeSettings(codec="zip")


def test_the_request_id_reaches_the_cloud(edge: Callable[..., TestClient]) -> None:
    seen: list[str] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("x-request-id", ""))
        return httpx.Response(503, json={"detail": "down"})

    response = edge(record).post("/v1/classify", files={"image": ("a.jpg", JPEG)}, headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert seen == ["abc-123"]


def test_openapi_documents_the_routes(edge: Callable[..., TestClient]) -> None:
    schema = edge(_refuse).get("/openapi.json").json()
    assert {"/v1/classify", "/v1/classify/batch", "/v1/info", "/healthz", "/readyz", "/metrics"} <= set(schema["paths"])
    body = schema["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/*"} <= set(body)


def test_requests_beyond_the_concurrency_limit_get_503_with_retry_after(
    edge: Callable[..., TestClient], reference: tuple[str, torch.Tensor]
) -> None:
    digest, logits = reference
    entered, release = threading.Event(), threading.Event()
    reply = encode_logits(logits, model="resnet18", weights=digest, cut="layer3")

    async def held(request: httpx.Request) -> httpx.Response:
        entered.set()  # the first request is admitted and waits on the cloud
        while not release.is_set():
            await asyncio.sleep(0.01)
        return httpx.Response(200, content=reply)

    client = edge(held, max_concurrent_requests=1, read_timeout_s=30.0)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(_classify, client)
        assert entered.wait(60)
        refused = _classify(client)
        release.set()
        assert first.result(60).status_code == 200
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.headers["content-type"] == "application/problem+json"
    assert "the limit is 1" in refused.json()["detail"]


def test_heads_run_one_per_core_when_each_takes_one_thread() -> None:
    from edge_service.settings import EdgeSettings

    cores = len(os.sched_getaffinity(0))
    assert EdgeSettings(engine="onnxruntime", onnx_threads=1).resolved_head_workers() == cores
    assert EdgeSettings(threads=1).resolved_head_workers() == cores
    assert EdgeSettings().resolved_head_workers() == 1  # NOTE: torch's default: one head on every core
    assert EdgeSettings(head_workers=3).resolved_head_workers() == 3


def test_the_access_log_says_why_a_request_failed(
    edge: Callable[..., TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    """An operator reading the edge's log saw ``status=503`` and nothing else for every request a dead cloud
    failed (and ``status=409`` for a cloud with other weights): the line now names the problem and its detail."""
    client = edge(_refuse)
    with caplog.at_level(logging.INFO, logger="splitinfer.access"):
        assert _classify(client).status_code == 503
    lines = [r.getMessage() for r in caplog.records if r.name == "splitinfer.access"]
    [line] = [line for line in lines if "/v1/classify" in line]
    assert "status=503" in line and "problem=cloud-unavailable" in line
    assert 'detail="cannot connect to the cloud' in line and "\n" not in line
