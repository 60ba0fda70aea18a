"""The torch-free edge in front of a cloud that serves HTTPS with its own certificate: ``CA_BUNDLE`` verifies it,
as on the torch edge (edge_lite had no such setting: it could only trust the system's CAs)."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from edge_lite.app import create_app
from edge_lite.settings import EdgeLiteSettings
from tests.support.tls import self_signed_certificate


class _OtherModelsInfo(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"model": "another", "weights_digest": "sha256:0ther"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture(scope="module")
def tls_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The URL of an HTTPS server that answers /v1/info for another model, and its certificate."""
    certificate, key = self_signed_certificate(tmp_path_factory.mktemp("tls"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OtherModelsInfo)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", certificate
    finally:
        server.shutdown()
        server.server_close()


def test_the_ca_bundle_verifies_a_self_signed_cloud(tiny_export: Path, tls_cloud: tuple[str, Path]) -> None:
    url, certificate = tls_cloud
    with TestClient(create_app(EdgeLiteSettings(onnx_dir=tiny_export, cloud_url=url, ca_bundle=str(certificate)))) as c:
        ready = c.get("/readyz")
    # NOTE: the cloud's answer was read over TLS: it serves another model
    assert ready.status_code == 503 and "sha256:0ther" in ready.json()["detail"], ready.text
    with TestClient(create_app(EdgeLiteSettings(onnx_dir=tiny_export, cloud_url=url))) as c:
        unverified = c.get("/readyz")
    assert unverified.status_code == 503 and "CERTIFICATE_VERIFY_FAILED" in unverified.json()["detail"]
