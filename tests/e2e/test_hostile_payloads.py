"""Hostile ``/v1/tail`` payloads against a real cloud process: what a payload decodes to is memory the cloud
must bound, whatever the payload's size on the wire (a few KiB of ``int2+ans`` or ``dct50+ans`` decode to a
whole batch of activations, 16 tiny JPEGs to 16 normalized crops)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from bench.hostile_payloads import small_payload
from shared.wire import MEDIA_TYPE
from splitinfer.processes import Service, start_service, wait_until

pytestmark = pytest.mark.e2e

TINY_MODEL = "tests.fixture_models:tiny_cnn"
MIB = 1024 * 1024


def _small_payload(batch: int, kind: str) -> tuple[bytes, int]:
    """A small payload that decodes to ``batch`` items: zero activations at the tiny model's largest cut
    (``int2+ans``), or tiny JPEGs; its bytes, and the bytes of the float32 tensors it decodes to."""
    body, _, decoded = small_payload(TINY_MODEL, "image" if kind == "image" else "int2+ans", batch)
    return body, decoded


@pytest.mark.parametrize("kind", ["activations", "image"])
def test_small_payloads_in_flight_are_bounded_by_what_they_decode_to(
    tmp_path: Path, stop_all: list[Service], kind: str
) -> None:
    body, decoded = _small_payload(16, kind)
    assert len(body) < 16 * 1024 < decoded
    budget = int(decoded * 3 * 1.5)  # NOTE: room for one such payload's decoding (3x its size), not two
    cloud = start_service(
        "cloud",
        ["--model", TINY_MODEL, "--weights", "none", "--max-delay-ms", "1000"],
        tmp_path,
        env={"SPLITINFER_MAX_DECODED_BYTES_IN_FLIGHT": str(budget)},
    )
    stop_all.append(cloud)
    wait_until(cloud, "/readyz")
    headers = {"Content-Type": MEDIA_TYPE}
    with httpx.Client(base_url=cloud.url, timeout=60, headers=headers) as client:
        assert client.post("/v1/tail", content=body).status_code == 200  # NOTE: builds the tail once
        first: list[httpx.Response] = []
        # NOTE: 16 of 32 items: the batcher holds the first request up to 1 s for others to join
        thread = threading.Thread(target=lambda: first.append(client.post("/v1/tail", content=body)))
        thread.start()
        time.sleep(0.4)
        second = client.post("/v1/tail", content=body)
        thread.join(60)
        assert first[0].status_code == 200, first[0].text
        assert second.status_code == 503, second.text
        assert second.headers["content-type"] == "application/problem+json"
        assert second.headers["retry-after"] == "1"
        assert "decode" in second.json()["detail"]
        # NOTE: the first request's reservation ended with it: a request alone is admitted again
        assert client.post("/v1/tail", content=body).status_code == 200
