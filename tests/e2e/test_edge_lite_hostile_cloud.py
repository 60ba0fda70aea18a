"""The torch-free edge (edge_lite, a real process) in front of a hostile cloud (a small HTTP server in the
test): a reply trickled a byte at a time gets 504 at the request deadline, and a huge ``/v1/info`` costs
``/readyz`` a bounded amount of memory."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
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
from tests.e2e.test_torch_free_edge import start_edge_lite

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


def _edge(export: Path, cloud_url: str, logs: Path, stop_all: list[Service]) -> Service:
    edge = start_edge_lite(sys.executable, export, cloud_url, logs)
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
