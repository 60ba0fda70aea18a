"""A large image that fails partway through decoding is followed by a heap trim, as a decoded one is.

Pillow allocates an image's whole buffer before it reads its data; a large PNG or JPEG truncated halfway
then raises InvalidImage, and the request ended without a trim: glibc kept the freed buffer in its arenas.
The edge (any request) and the cloud (images at cut ``input``) count the pixels the failed decode had
allocated (``UndecodableImage.decoded_pixels``) and trim after many, in-process here with the real
``malloc_trim``; tests/e2e/test_hardening.py shows the resident memory of a real process.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
from fastapi.testclient import TestClient

from cloud_service import CloudSettings
from cloud_service import create_app as create_cloud
from edge_service import EdgeSettings
from edge_service import create_app as create_edge
from service_core.heap import LARGE_DECODE_PIXELS, HeapTrimmer, malloc_trim
from shared.models import load_model
from shared.protocol import encode_images
from shared.wire import MEDIA_TYPE
from tests.support.images import png_bytes_of_size

TINY = "tests.fixture_models:tiny_cnn"
BIG = png_bytes_of_size(2500, 2000)  # 5 Mpixel, over LARGE_DECODE_PIXELS
SMALL = png_bytes_of_size(1000, 1000)

pytestmark = pytest.mark.skipif(malloc_trim() is None, reason="no malloc_trim in this C library")


def truncated(blob: bytes) -> bytes:
    """The first 60 % of an image's bytes: its header is whole, its data runs out halfway."""
    return blob[: len(blob) * 6 // 10]


def _refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("no cloud in this test", request=request)


def _trims_after(client: TestClient, post: Callable[[], httpx.Response], expected: int) -> int:
    """The trims that follow ``post``'s 422, waiting (up to 10 s) for ``expected`` of them, then a moment
    more, long enough for one more that should not happen to be counted."""
    heap: HeapTrimmer = client.app.state.service.heap  # type: ignore[attr-defined]
    before = heap.trims
    response = post()
    assert response.status_code == 422, response.text
    assert "truncated" in response.json()["detail"]
    deadline = time.monotonic() + 10
    while heap.trims - before < expected and time.monotonic() < deadline:  # NOTE: trims run in a worker thread
        time.sleep(0.02)
    time.sleep(0.2)
    return heap.trims - before


def test_the_edge_trims_after_a_large_image_that_fails_partway() -> None:
    assert 2500 * 2000 >= LARGE_DECODE_PIXELS > 1000 * 1000
    settings = EdgeSettings(model=TINY, weights="none", cut="output")  # type: ignore[call-arg]
    with TestClient(create_edge(settings, cloud_transport=httpx.MockTransport(_refuse))) as client:

        def post(blob: bytes) -> Callable[[], httpx.Response]:
            return lambda: client.post("/v1/classify", files={"image": ("a.png", blob)})

        def post_batch(*blobs: bytes) -> Callable[[], httpx.Response]:
            files = [("images", (f"{i}.png", blob)) for i, blob in enumerate(blobs)]
            return lambda: client.post("/v1/classify/batch", files=files)

        assert _trims_after(client, post(truncated(SMALL)), 0) == 0  # small: no trim
        assert _trims_after(client, post(truncated(BIG)), 1) == 1
        # a batch: the images decoded before the failed one count too (4 + 1 Mpixel)
        assert _trims_after(client, post_batch(png_bytes_of_size(2000, 2000), truncated(SMALL)), 1) == 1


def test_the_cloud_trims_after_a_large_image_at_cut_input_that_fails_partway() -> None:
    loaded = load_model(TINY, "none")

    def payload(blob: bytes) -> bytes:
        return encode_images([blob], [], loaded.preprocessor, model=TINY, weights=loaded.digest, codec="image")

    with TestClient(create_cloud(CloudSettings(model=TINY, weights="none"))) as client:  # type: ignore[call-arg]

        def post(blob: bytes) -> Callable[[], httpx.Response]:
            return lambda: client.post("/v1/tail", content=payload(blob), headers={"Content-Type": MEDIA_TYPE})

        assert _trims_after(client, post(truncated(SMALL)), 0) == 0
        assert _trims_after(client, post(truncated(BIG)), 1) == 1
