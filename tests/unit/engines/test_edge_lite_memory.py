"""The torch-free edge's memory bounds in process: the decode budget (MAX_DECODED_BYTES_IN_FLIGHT) and the
heap trim after large decodes, whole or failed partway (tests/e2e/test_edge_lite_hostile_cloud.py measures
them on a real process), and the image limits they are priced with (IMAGE_FORMATS)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import ValidationError

from edge_lite.app import EdgeLiteState, create_app
from edge_lite.settings import EdgeLiteSettings
from service_core.heap import LARGE_DECODE_PIXELS, HeapTrimmer
from service_core.image_cost import images_cost
from shared.protocol import encode_logits
from splitinfer.samples import encode_image, synthetic_image
from tests.support.images import png_bytes_of_size

MIB = 1024 * 1024
BIG = (3000, 2000)  # 6 megapixels: past LARGE_DECODE_PIXELS, 24 MB in the budget
SMALL_JPEG = encode_image(synthetic_image())


class _Trims:
    """A stand-in for malloc_trim that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def _client(tiny_export: Path, **settings: int | str) -> Iterator[tuple[TestClient, EdgeLiteState, _Trims]]:
    app = create_app(EdgeLiteSettings(onnx_dir=tiny_export, **settings))  # type: ignore[arg-type]
    with TestClient(app) as client:
        state: EdgeLiteState = app.state.edge
        manifest = state.manifest
        reply = encode_logits(torch.zeros(1, 10), model=manifest.model, weights=manifest.weights, cut="stem")
        state.client = httpx.AsyncClient(
            base_url="http://cloud",
            transport=httpx.MockTransport(lambda _: httpx.Response(200, stream=httpx.ByteStream(reply))),
        )
        trims = _Trims()
        state.heap = HeapTrimmer(trims)
        yield client, state, trims


@pytest.fixture
def small_budget(tiny_export: Path) -> Iterator[tuple[TestClient, EdgeLiteState, _Trims]]:
    yield from _client(tiny_export, max_decoded_bytes_in_flight=20 * MIB)


def _post(client: TestClient, blob: bytes) -> httpx.Response:
    return client.post("/v1/classify", files={"image": ("a.png", blob)})


def _truncated_png(width: int, height: int) -> bytes:
    """A noisy RGB PNG cut at 80 % of its bytes: Pillow allocates the whole image, then the data runs out."""
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    data = buffer.getvalue()
    return data[: len(data) * 8 // 10]


def _trimmed(trims: _Trims, count: int, wait_s: float = 10) -> int:
    """The trims counted once ``count`` have run (they run in a worker thread), or after ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while trims.calls < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return trims.calls


def test_the_budget_setting_has_the_torch_edges_name_and_a_small_devices_default(
    tiny_export: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert EdgeLiteSettings(onnx_dir=tiny_export).max_decoded_bytes_in_flight == 256 * MIB
    monkeypatch.setenv("SPLITINFER_MAX_DECODED_BYTES_IN_FLIGHT", str(64 * MIB))
    assert EdgeLiteSettings(onnx_dir=tiny_export).max_decoded_bytes_in_flight == 64 * MIB
    with pytest.raises(ValidationError, match="max_decoded_bytes_in_flight"):
        EdgeLiteSettings(onnx_dir=tiny_export, max_decoded_bytes_in_flight=0)


def test_a_request_past_the_budget_is_refused_before_decoding_and_one_alone_is_admitted(
    small_budget: tuple[TestClient, EdgeLiteState, _Trims],
) -> None:
    client, state, trims = small_budget
    big = png_bytes_of_size(*BIG)  # 24 MB decoded: more than the whole budget
    state.decode_budget.in_use = 1  # NOTE: as if another request were decoding a 1-byte image
    refused = _post(client, big)
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["content-type"] == "application/problem+json"
    assert "MAX_DECODED_BYTES_IN_FLIGHT" in refused.json()["detail"]
    assert _post(client, SMALL_JPEG).status_code == 200  # NOTE: 256x256, 256 KiB: it fits beside the other
    state.decode_budget.in_use = 0
    alone = _post(client, big)
    assert alone.status_code == 200, alone.text
    assert "decode" in alone.json()["timings_ms"]
    assert state.decode_budget.in_use == 0
    assert _trimmed(trims, 1) == 1  # NOTE: the refused request decoded nothing: only the admitted one trimmed


def test_the_heap_is_trimmed_after_large_decodes_whole_or_failed_partway(
    small_budget: tuple[TestClient, EdgeLiteState, _Trims],
) -> None:
    client, state, trims = small_budget
    assert _post(client, SMALL_JPEG).status_code == 200
    assert _trimmed(trims, 1, wait_s=0.5) == 0 and state.heap.threshold_pixels == LARGE_DECODE_PIXELS
    assert _post(client, png_bytes_of_size(*BIG)).status_code == 200
    assert _trimmed(trims, 1) == 1
    failed = _post(client, _truncated_png(*BIG))
    assert failed.status_code == 422, failed.text
    assert _trimmed(trims, 2) == 2
    assert state.decode_budget.in_use == 0


def test_image_formats_are_the_settings_and_a_refused_format_costs_nothing(tiny_export: Path) -> None:
    """IMAGE_FORMATS was ignored (every default format decoded); an image it refuses is refused (415) from its
    signature, before decoding, so it reserves nothing."""
    for client, state, trims in _client(tiny_export, image_formats="PNG", max_decoded_bytes_in_flight=20 * MIB):
        assert state.limits.formats == ("PNG",)
        jpeg = encode_image(synthetic_image(3000, 2000))
        assert images_cost([jpeg], state.limits, state.preprocessor.resize_size) == 0
        state.decode_budget.in_use = 20 * MIB  # NOTE: full: anything that costs something is refused (503)
        refused = _post(client, jpeg)
        assert refused.status_code == 415, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        state.decode_budget.in_use = 0
        assert _post(client, png_bytes_of_size(640, 480)).status_code == 200
        assert _trimmed(trims, 1, wait_s=0.5) == 0


def test_the_app_starts_again_after_it_stopped(tiny_export: Path) -> None:
    """Its metrics are made once, with the app: a second start (a test client entered twice, a restarted
    lifespan) registered them again in the same registry and failed with prometheus' duplicate error."""
    app = create_app(EdgeLiteSettings(onnx_dir=tiny_export))
    for _ in range(2):
        with TestClient(app) as client:
            assert client.get("/healthz").status_code == 200
            assert b"splitinfer_requests_total" in client.get("/metrics").content
