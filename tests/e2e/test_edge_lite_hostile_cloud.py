"""The torch-free edge (edge_lite, a real process) in front of a hostile cloud (a small HTTP server in the
test): a reply trickled a byte at a time gets 504 at the request deadline, and a huge ``/v1/info`` costs
``/readyz`` a bounded amount of memory. And in front of a quick one, its memory under large images: what
concurrent requests decode together is bounded (MAX_DECODED_BYTES_IN_FLIGHT, peak RSS growth), and a burst
of large images, decoded whole or failing partway, leaves the process no larger than before (the heap trim).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import torch

from shared.models import load_model
from shared.onnx_export import export_split
from shared.protocol import encode_logits
from splitinfer.processes import Service, rss_kib, wait_until
from splitinfer.samples import encode_image, synthetic_image
from tests.e2e.test_hardening import _memory_goes_back, _truncated_rgb_png
from tests.e2e.test_torch_free_edge import start_edge_lite
from tests.support.images import png_bytes_of_size

pytestmark = pytest.mark.e2e

TINY_MODEL = "tests.fixture_models:tiny_cnn"
MIB = 1024 * 1024


class _HostileCloud(BaseHTTPRequestHandler):
    """``/v1/info``: the model's, or ``huge_info_mib`` MiB of spaces; ``/v1/tail``: headers, then a byte every
    0.5 s (never a read timeout, never an end)."""

    protocol_version = "HTTP/1.1"
    info: bytes = b""
    huge_info_mib = 0
    reply: bytes = b""
    """If set, what ``/v1/tail`` answers at once instead of its trickle."""
    stop = threading.Event()

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.huge_info_mib:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(self.huge_info_mib * MIB))
            self.end_headers()
            for _ in range(self.huge_info_mib):
                self.wfile.write(b" " * MIB)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.info)))
        self.end_headers()
        self.wfile.write(self.info)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.reply:
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.splitinfer+safetensors")
            self.send_header("Content-Length", str(len(self.reply)))
            self.end_headers()
            self.wfile.write(self.reply)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.splitinfer+safetensors")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        for _ in range(240):  # NOTE: bounded: two minutes at most
            if self.stop.wait(0.5):
                return
            self.wfile.write(b" ")
            self.wfile.flush()


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[tuple[Path, str, type[_HostileCloud]]]:
    loaded = load_model(TINY_MODEL, "none")
    export_split(
        loaded.graph(), "stem", model=loaded.name, weights=loaded.digest, preprocessing=loaded.preprocessor.to_json()
    ).write(tmp_path / "export")
    handler = type("Cloud", (_HostileCloud,), {"stop": threading.Event()})
    handler.info = json.dumps({"model": loaded.name, "weights_digest": loaded.digest}).encode()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield tmp_path / "export", f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        handler.stop.set()
        server.shutdown()
        server.server_close()


def _edge(export: Path, cloud_url: str, logs: Path, stop_all: list[Service], extra: Sequence[str] = ()) -> Service:
    edge = start_edge_lite(sys.executable, export, cloud_url, logs, extra=extra)
    stop_all.append(edge)
    wait_until(edge, "/healthz")
    return edge


def test_a_cloud_that_trickles_its_reply_gets_504_at_the_deadline(
    hostile: tuple[Path, str, type[_HostileCloud]],
    tmp_path: Path,
    stop_all: list[Service],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    export, cloud_url, _ = hostile
    monkeypatch.setenv("SPLITINFER_REQUEST_TIMEOUT_S", "3")  # NOTE: the edge's environment is the test's
    edge = _edge(export, cloud_url, tmp_path, stop_all)
    started = time.monotonic()
    response = httpx.post(
        f"{edge.url}/v1/classify", files={"image": ("a.jpg", encode_image(synthetic_image()))}, timeout=30
    )
    assert response.status_code == 504, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert time.monotonic() - started < 10


def test_a_huge_cloud_info_costs_readyz_little(
    hostile: tuple[Path, str, type[_HostileCloud]], tmp_path: Path, stop_all: list[Service]
) -> None:
    export, cloud_url, handler = hostile
    edge = _edge(export, cloud_url, tmp_path, stop_all)
    assert httpx.get(f"{edge.url}/readyz", timeout=30).status_code == 200
    before = rss_kib(edge.process.pid, "VmHWM")
    handler.huge_info_mib = 256
    response = httpx.get(f"{edge.url}/readyz", timeout=60)
    assert response.status_code == 503, response.text
    assert (rss_kib(edge.process.pid, "VmHWM") - before) / 1024 < 32


def test_logits_of_another_cut_than_the_one_sent_are_a_bad_gateway(
    hostile: tuple[Path, str, type[_HostileCloud]], tmp_path: Path, stop_all: list[Service]
) -> None:
    """The export is split at ``stem``; a cloud (or a proxy mixing replies) answering with logits it says it
    computed at ``block`` is refused as the cloud's fault."""
    export, cloud_url, handler = hostile
    info = json.loads(handler.info)
    handler.reply = encode_logits(torch.zeros(1, 10), model=info["model"], weights=info["weights_digest"], cut="block")
    edge = _edge(export, cloud_url, tmp_path, stop_all)
    response = httpx.post(
        f"{edge.url}/v1/classify", files={"image": ("a.jpg", encode_image(synthetic_image()))}, timeout=30
    )
    assert response.status_code == 502, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert "cut 'block'; expected 'stem'" in response.json()["detail"]
    handler.reply = encode_logits(torch.ones(1, 10), model=info["model"], weights=info["weights_digest"], cut="stem")
    response = httpx.post(
        f"{edge.url}/v1/classify", files={"image": ("a.jpg", encode_image(synthetic_image()))}, timeout=30
    )
    assert response.status_code == 200, response.text


# -- memory under large images (a cloud that answers at once) -----------------------------------------------


def _quick_cloud(handler: type[_HostileCloud]) -> None:
    info = json.loads(handler.info)
    handler.reply = encode_logits(torch.zeros(1, 10), model=info["model"], weights=info["weights_digest"], cut="stem")


def test_what_concurrent_requests_decode_together_is_bounded(
    hostile: tuple[Path, str, type[_HostileCloud]], tmp_path: Path, stop_all: list[Service]
) -> None:
    """Eight requests at once, each a 20-megapixel greyscale PNG of 20 KB: decoding one takes 100 MB at its
    peak (5 bytes a pixel: the grey image and its RGB copy), and all eight took +800 MiB of peak RSS before
    (measured). With the default MAX_DECODED_BYTES_IN_FLIGHT (256 MiB; 120 MB reserved for each: its RGB
    pixels and, for the conversion, 2 bytes a pixel: service_core.image_cost) two decode at once and the
    others get 503 + Retry-After before decoding."""
    export, cloud_url, handler = hostile
    _quick_cloud(handler)
    edge = _edge(export, cloud_url, tmp_path, stop_all)
    big = png_bytes_of_size(5000, 4000)
    with httpx.Client(base_url=edge.url, timeout=120) as client:
        assert client.post("/v1/classify", files={"image": ("a.jpg", encode_image(synthetic_image()))}).is_success
        before = rss_kib(edge.process.pid, "VmHWM")
        with ThreadPoolExecutor(8) as pool:
            responses = list(
                pool.map(lambda _: client.post("/v1/classify", files={"image": ("big.png", big)}), range(8))
            )
    growth_mib = (rss_kib(edge.process.pid, "VmHWM") - before) / 1024
    statuses = sorted(r.status_code for r in responses)
    assert statuses[0] == 200 and statuses[-1] == 503 and set(statuses) == {200, 503}, statuses
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["content-type"] == "application/problem+json"
    assert "MAX_DECODED_BYTES_IN_FLIGHT" in refused.json()["detail"]
    assert growth_mib < 600, growth_mib
    metrics = httpx.get(f"{edge.url}/metrics").text
    assert f'splitinfer_requests_total{{status="503"}} {statuses.count(503)}.0' in metrics


@pytest.mark.parametrize("kind", ["whole", "failing partway"])
def test_memory_of_a_burst_of_large_images_goes_back_to_the_system(
    hostile: tuple[Path, str, type[_HostileCloud]],
    tmp_path: Path,
    stop_all: list[Service],
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    """Eight 36-megapixel PNGs of a few KB, four at a time (a budget that admits them all: the trim alone is
    tested), decoded whole (200) or cut at 80 % of their bytes (422, after Pillow allocated and partly filled
    their buffers): the process is back within 200 MiB of its size before the burst in 10 s. Without the trim
    it stayed 670 MiB (whole) and 510 MiB (failing) larger (measured)."""
    export, cloud_url, handler = hostile
    _quick_cloud(handler)
    # NOTE: the environment, not a flag: the code before the budget ignores it (and fails on the memory alone)
    monkeypatch.setenv("SPLITINFER_MAX_DECODED_BYTES_IN_FLIGHT", str(4 * 1024**3))
    edge = _edge(export, cloud_url, tmp_path, stop_all)
    pid = edge.process.pid
    big, status = (png_bytes_of_size(7200, 5000), 200) if kind == "whole" else (_truncated_rgb_png(7200, 5000), 422)
    with httpx.Client(base_url=edge.url, timeout=120) as client:
        assert client.post("/v1/classify", files={"image": ("a.jpg", encode_image(synthetic_image()))}).is_success
        before = rss_kib(pid, "VmRSS")

        _memory_goes_back(pid, before, lambda: client.post("/v1/classify", files={"image": ("big.png", big)}), status)
