"""The torch edge refuses a logits reply for another cut than the one it sent (the cloud's fault: 502).

A misbehaving cloud, or a proxy that mixes up replies, could answer a request with logits computed at
another cut; the reply's metadata names that cut, and the edge checks it against its request's, on the
single-image, batch and ``input`` cut paths.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from edge_service.runtime import EdgeModel
from shared.errors import BadGateway
from shared.models import load_model
from shared.preprocessing import ImageLimits
from shared.protocol import encode_logits
from splitinfer.samples import encode_image, synthetic_image
from tests.support.edge_clients import mock_cloud_edges

TINY = "tests.fixture_models:tiny_cnn"
JPEG = encode_image(synthetic_image(seed=3))
CLASSES = 10


@pytest.fixture(scope="module")
def digest() -> str:
    return load_model(TINY, "none").digest


def _replying(digest: str, cut: str, rows: int) -> Callable[[httpx.Request], httpx.Response]:
    """A cloud whose /v1/tail answers ``rows`` rows of logits said to come from ``cut``."""
    body = encode_logits(torch.zeros(rows, CLASSES), model=TINY, weights=digest, cut=cut)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"Content-Type": "application/vnd.splitinfer+safetensors"})

    return handler


@pytest.fixture
def edge() -> Iterator[Callable[..., TestClient]]:
    with mock_cloud_edges(model=TINY, weights="none", read_timeout_s=5.0) as build:
        yield build


def test_decode_logits_refuses_a_reply_for_another_cut(digest: str) -> None:
    model = EdgeModel(load_model(TINY, "none"), ImageLimits())
    ours = encode_logits(torch.ones(2, CLASSES), model=TINY, weights=digest, cut="block")
    assert torch.equal(model.decode_logits(ours, 2, "block"), torch.ones(2, CLASSES))
    theirs = encode_logits(torch.ones(2, CLASSES), model=TINY, weights=digest, cut="stem")
    with pytest.raises(BadGateway, match=r"cut 'stem'.*sent cut 'block'"):
        model.decode_logits(theirs, 2, "block")


@pytest.mark.parametrize(
    ("sent", "answered", "images"),
    [("block", "stem", 1), ("block", "stem", 3), ("input", "block", 1), ("input", "block", 2), ("stem", "input", 1)],
    ids=["single", "batch", "input-cut", "input-cut-batch", "logits-said-to-be-of-input"],
)
def test_the_edge_answers_502_to_logits_of_another_cut(
    edge: Callable[..., TestClient], digest: str, sent: str, answered: str, images: int
) -> None:
    client = edge(_replying(digest, answered, images), cut=sent)
    if images == 1:
        response = client.post("/v1/classify", files={"image": ("a.jpg", JPEG)})
    else:
        response = client.post("/v1/classify/batch", files=[("images", (f"{i}.jpg", JPEG)) for i in range(images)])
    assert response.status_code == 502, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert f"cut {answered!r}" in response.json()["detail"]
    assert f"sent cut {sent!r}" in response.json()["detail"]


@pytest.mark.parametrize("cut", ["block", "input"])
def test_the_edge_takes_logits_of_its_own_cut(edge: Callable[..., TestClient], digest: str, cut: str) -> None:
    client = edge(_replying(digest, cut, 2), cut=cut)
    response = client.post("/v1/classify/batch", files=[("images", (f"{i}.jpg", JPEG)) for i in range(2)])
    assert response.status_code == 200, response.text
    assert response.json()["completed_on"] == "cloud"
    assert response.json()["cut"] == cut


def test_with_local_fallback_logits_of_another_cut_are_finished_on_the_edge(
    edge: Callable[..., TestClient], digest: str
) -> None:
    client = edge(_replying(digest, "stem", 1), cut="block", fallback="local")
    response = client.post("/v1/classify", files={"image": ("a.jpg", JPEG)})
    assert response.status_code == 200, response.text
    assert response.json()["completed_on"] == "edge"
