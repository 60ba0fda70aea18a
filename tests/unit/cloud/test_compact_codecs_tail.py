"""The cloud runs its tail on compact-codec payloads and refuses broken ones with their typed status."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import safetensors.torch
import torch
from fastapi.testclient import TestClient

from cloud_service.app import create_app
from cloud_service.settings import CloudSettings
from shared.models import LoadedModel, load_model
from shared.protocol import encode_activations, expected_for_cut
from shared.splitting import Cut, ModelGraph
from shared.wire import MEDIA_TYPE, WireLimits, decode_payload, read_header

TINY = "tests.fixture_models:tiny_cnn"
HEADERS = {"Content-Type": MEDIA_TYPE, "Accept": "application/json"}


@dataclass
class Setup:
    client: TestClient
    loaded: LoadedModel
    cut: Cut
    shipped: tuple[torch.Tensor, ...]
    tail: torch.nn.Module

    def encode(self, codec: str) -> bytes:
        return encode_activations(self.shipped, self.cut, model=TINY, weights=self.loaded.digest, codec=codec)


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    loaded = load_model(TINY, "none")
    graph = ModelGraph(loaded.module, loaded.input_shape)
    cut = graph.cut("stem")
    head, tail = graph.split(cut)
    with torch.no_grad():
        shipped = tuple(head(torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))))
    with TestClient(create_app(CloudSettings(model=TINY, weights="none"))) as client:
        yield Setup(client, loaded, cut, shipped, tail)


@pytest.mark.parametrize("codec", ["int4", "int3+zstd", "int5+ans", "int8-top50+ans", "budget20+ans"])
def test_tail_runs_on_compact_payloads(codec: str, setup: Setup) -> None:
    data = setup.encode(codec)
    response = setup.client.post("/v1/tail", content=data, headers=HEADERS)
    assert response.status_code == 200, response.text
    decoded = decode_payload(
        data, kind="activations", model=TINY, weights=setup.loaded.digest, expected=expected_for_cut(setup.cut)
    )
    with torch.no_grad():
        expected = setup.tail(*decoded.tensors)
    assert torch.allclose(torch.tensor(response.json()["logits"]), expected, atol=1e-4)


def _tamper(data: bytes, component: str, value: torch.Tensor | None = None, **meta: str) -> bytes:
    metadata, _ = read_header(data, WireLimits())
    stored = dict(safetensors.torch.load(data))
    if value is not None:
        stored[component] = value
    return safetensors.torch.save(stored, metadata=metadata | meta)


def test_broken_compact_payloads_get_their_status(setup: Setup) -> None:
    good = setup.encode("int4+ans")
    name = setup.cut.tensors[0].name
    cases = {
        "old layout": (_tamper(good, name, layout="0"), 415),
        "table too short": (_tamper(good, f"{name}.counts", torch.ones(8, dtype=torch.uint8)), 422),
        "stream not in words": (_tamper(good, name, torch.ones(7, dtype=torch.uint8)), 400),
        "stream too long": (_tamper(good, name, torch.ones(10**6, dtype=torch.uint8)), 413),
    }
    for label, (data, status) in cases.items():
        response = setup.client.post("/v1/tail", content=data, headers=HEADERS)
        assert response.status_code == status, (label, response.text)
        assert response.headers["content-type"].startswith("application/problem+json"), label
