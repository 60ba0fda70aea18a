"""Faults with real processes on loopback: a killed, slow or lying cloud, auth and TLS, draining, bad input."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import torch

from shared.models import load_model
from shared.protocol import encode_activations
from shared.splitting import ModelGraph
from shared.wire import MEDIA_TYPE, encode_payload
from splitinfer.processes import Service, free_port, start_service, wait_until
from splitinfer.samples import encode_image, synthetic_image
from tests.support.tls import self_signed_certificate

pytestmark = pytest.mark.e2e

TINY = ["--model", "tests.fixture_models:tiny_cnn", "--weights", "none"]
JPEG = encode_image(synthetic_image(seed=5))
TOKEN = "s3cret-token-for-tests"


def _classify(url: str, **kwargs: object) -> httpx.Response:
    return httpx.post(f"{url}/v1/classify", files={"image": ("a.jpg", JPEG)}, timeout=30, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    return tmp_path


async def _hammer(urls: list[str], clients: int, seconds: float) -> list[tuple[str, int, float, str]]:
    """``clients`` concurrent clients per URL for ``seconds``: (url, status, latency s, completed_on)."""
    results: list[tuple[str, int, float, str]] = []
    deadline = time.monotonic() + seconds

    async def client(http: httpx.AsyncClient, url: str) -> None:
        while time.monotonic() < deadline:
            started = time.monotonic()
            response = await http.post(f"{url}/v1/classify", files={"image": ("a.jpg", JPEG)})
            body = response.json()
            results.append((url, response.status_code, time.monotonic() - started, body.get("completed_on", "")))

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=200)) as http:
        await asyncio.gather(*(client(http, url) for url in urls for _ in range(clients)))
    return results


def test_killing_the_cloud_under_load(logs: Path, stop_all: list[Service]) -> None:
    cloud_port = free_port()
    cloud = start_service("cloud", TINY, logs, port=cloud_port)
    stop_all.append(cloud)
    common = [*TINY, "--cut", "block", "--cloud-url", cloud.url, "--breaker-reset-s", "1"]
    local = start_service("edge", [*common, "--fallback", "local"], logs)
    strict = start_service(
        "edge", [*common, "--fallback", "none", "--read-timeout-s", "2", "--request-timeout-s", "4"], logs
    )
    stop_all += [local, strict]
    for service in (cloud, local, strict):
        wait_until(service)

    killer = threading.Timer(2.0, lambda: cloud.stop(signal.SIGKILL))
    killer.start()
    results = asyncio.run(_hammer([local.url, strict.url], clients=16, seconds=5.0))
    killer.join()

    by_edge = {url: [r for r in results if r[0] == url] for url in (local.url, strict.url)}
    assert {status for _, status, _, _ in by_edge[local.url]} == {200}
    assert {"cloud", "edge"} <= {done for _, _, _, done in by_edge[local.url]}  # before and after the kill
    strict_statuses = {status for _, status, _, _ in by_edge[strict.url]}
    assert strict_statuses <= {200, 503, 504} and strict_statuses & {503, 504}
    assert max(latency for _, _, latency, _ in by_edge[strict.url]) < 4.0 + 2.0  # the deadline, plus slack
    assert local.process.poll() is None and strict.process.poll() is None

    revived = start_service("cloud", TINY, logs, port=cloud_port)
    stop_all.append(revived)
    wait_until(revived)
    deadline = time.monotonic() + 30
    recovered: set[str] = set()
    while time.monotonic() < deadline and len(recovered) < 2:
        for edge in (local, strict):
            response = _classify(edge.url)
            if response.status_code == 200 and response.json()["completed_on"] == "cloud":
                recovered.add(edge.url)
        time.sleep(0.3)
    assert recovered == {local.url, strict.url}  # without restarting the edges


class _FakeCloud(BaseHTTPRequestHandler):
    mode = "slow"
    model, weights, classes = "x", "y", 3  # the edge's own, once known (wrong-rows)

    def do_GET(self) -> None:  # /v1/info for readiness
        self._reply(200, b"{}", "application/json")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.mode == "slow":
            time.sleep(3)
            self._reply(200, b"late", MEDIA_TYPE)
        elif self.mode == "garbage":
            self._reply(200, b"\x00garbage" * 10, MEDIA_TYPE)
        else:  # a well-formed reply for the edge's model and weights: one row of logits for two images
            # (wrong-rows), or the row of one image said to come from another cut than the edge sent (wrong-cut)
            body = encode_payload(
                {"logits": torch.zeros(1, self.classes)},
                kind="logits",
                model=self.model,
                weights=self.weights,
                cut="stem" if self.mode == "wrong-cut" else "block",
                codec="fp32",
            )
            self._reply(200, body, MEDIA_TYPE)

    def _reply(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the edge gave up waiting
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def lying_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, Service, type[_FakeCloud]]]:
    """One fake cloud, whose ``mode`` each test sets, and two edges in front of it for all the modes (they
    were started per mode: 4 x 2 edges): ``strict`` (no fallback) and ``local`` (falls back to the edge).
    The breaker never opens (the modes fail one request each, not consecutive failures to act on)."""
    handler = type("Handler", (_FakeCloud,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    logs = tmp_path_factory.mktemp("lying-cloud")
    services: list[Service] = []
    try:
        args = [*TINY, "--cut", "block", "--cloud-url", url, "--read-timeout-s", "1", "--breaker-failures", "1000"]
        strict = start_service("edge", args, logs)
        services.append(strict)
        local = start_service("edge", [*args, "--fallback", "local"], logs)
        services.append(local)
        for service in (strict, local):
            wait_until(service, "/healthz")
            info = wait_until(service, "/v1/info").json()
        handler.model, handler.weights = info["model"], info["weights_digest"]
        handler.classes = len(_classify(local.url, params={"cut": "output", "logits": "true"}).json()["logits"])
        yield strict, local, handler
    finally:
        for service in services:
            service.stop(signal.SIGKILL)
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("mode", "status"), [("slow", 504), ("garbage", 502), ("wrong-rows", 502), ("wrong-cut", 502)])
def test_slow_or_lying_cloud(mode: str, status: int, lying_cloud: tuple[Service, Service, type[_FakeCloud]]) -> None:
    strict, local, handler = lying_cloud
    handler.mode = mode

    def send(url: str) -> httpx.Response:
        if mode != "wrong-rows":
            return _classify(url)
        two = [("images", ("a.jpg", JPEG)), ("images", ("b.jpg", JPEG))]
        return httpx.post(f"{url}/v1/classify/batch", files=two, timeout=30)

    started = time.monotonic()
    response = send(strict.url)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    if mode == "wrong-rows":
        assert "1 rows of logits for 2 images" in response.json()["detail"]
    if mode == "wrong-cut":
        assert "logits of cut 'stem'; this edge sent cut 'block'" in response.json()["detail"]
    assert time.monotonic() - started < 2.9  # the read timeout, not the cloud's 3 s
    fallback = send(local.url)
    assert fallback.status_code == 200 and fallback.json()["completed_on"] == "edge"
    assert strict.process.poll() is None


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


def test_token_and_tls(certificate: tuple[Path, Path], logs: Path, stop_all: list[Service]) -> None:
    cert, key = certificate
    token_file = logs / "token"
    token_file.write_text(TOKEN + "\n")
    tls = ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
    cloud = start_service("cloud", [*TINY, "--token-file", str(token_file), *tls], logs)
    stop_all.append(cloud)
    https = f"https://127.0.0.1:{cloud.port}"
    trusted = ssl.create_default_context(cafile=str(cert))
    edge_args = [*TINY, "--cut", "block", "--cloud-url", https, "--ca-bundle", str(cert)]
    edge = start_service("edge", [*edge_args, "--token-file", str(token_file)], logs)
    intruder = start_service("edge", [*edge_args, "--token", "wrong"], logs)
    stop_all += [edge, intruder]
    wait_until(edge)
    wait_until(intruder, "/healthz")

    assert _classify(edge.url).json()["completed_on"] == "cloud"
    refused = _classify(intruder.url)
    assert refused.status_code == 502 and "token" in refused.json()["detail"]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        direct = httpx.post(f"{https}/v1/tail", content=b"x", headers=headers, verify=trusted)
        assert direct.status_code == 401
        assert direct.headers["www-authenticate"].startswith("Bearer")
    assert httpx.get(f"{https}/healthz", verify=trusted).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{https}/healthz")  # not trusted without the CA bundle
    info = (
        httpx.get(f"{edge.url}/v1/info").text
        + httpx.get(f"{https}/v1/info", verify=trusted, headers={"Authorization": f"Bearer {TOKEN}"}).text
    )
    for service in (cloud, edge, intruder):
        service.stop()
    assert TOKEN not in info
    assert all(TOKEN not in service.output() for service in (cloud, edge, intruder))


def test_sigterm_turns_readiness_off_then_drains(logs: Path, stop_all: list[Service]) -> None:
    cloud = start_service("cloud", TINY, logs)
    edge = start_service("edge", [*TINY, "--cut", "block", "--cloud-url", cloud.url, "--drain-s", "3"], logs)
    stop_all += [cloud, edge]
    wait_until(cloud)
    wait_until(edge)
    edge.process.send_signal(signal.SIGTERM)
    # NOTE: polled, not slept on: a busy machine can take longer than a fixed sleep to deliver the signal
    deadline = time.monotonic() + 10
    while (ready := httpx.get(f"{edge.url}/readyz").status_code) == 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready == 503
    assert _classify(edge.url).status_code == 200  # still serving while the load balancer reacts
    # NOTE: uvicorn re-raises the handled signal once it has shut down cleanly, so -SIGTERM is a clean exit.
    assert edge.process.wait(30) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in edge.output()


def _cloud_payload(cut: str, tensors: dict[str, torch.Tensor], **overrides: str) -> bytes:
    fields = {"model": "tests.fixture_models:tiny_cnn", "weights": load_model(TINY[1], "none").digest}
    return encode_payload(tensors, kind="activations", cut=cut, codec="fp32", **(fields | overrides))  # type: ignore[arg-type]


def _raw_post(port: int, path: str, headers: dict[str, str], body: bytes) -> int:
    """A POST whose headers may lie (httpx refuses to send a wrong Content-Length); returns the status."""
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n".encode() + body)
        status_line = sock.makefile("rb").readline().decode()
    return int(status_line.split()[1])


def test_bad_input_matrix_on_the_cloud(logs: Path, stop_all: list[Service]) -> None:
    cloud = start_service("cloud", [*TINY, "--max-batch-size", "4", "--token", TOKEN], logs)
    stop_all.append(cloud)
    wait_until(cloud)
    loaded = load_model(TINY[1], "none")
    graph = ModelGraph(loaded.module, loaded.input_shape)
    cut = graph.cut("stem")
    assert cut.single_tensor
    head, _ = graph.split(cut)
    with torch.no_grad():
        good_tensors = head(torch.randn(1, 3, 224, 224))
    good = encode_activations(good_tensors, cut, model=TINY[1], weights=loaded.digest, codec="fp16")
    name, shape = cut.tensors[0].name, cut.tensors[0].shape
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": MEDIA_TYPE}
    negative = json.dumps({"__metadata__": {}, "t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}).encode()
    cases = {
        "garbage": (b"\x00" * 64, auth, 400),
        "negative shape": (struct.pack("<Q", len(negative)) + negative, auth, 400),
        "wrong model": (_cloud_payload("stem", {name: torch.ones(shape)}, model="resnet18"), auth, 409),
        "wrong weights": (_cloud_payload("stem", {name: torch.ones(shape)}, weights="sha256:00"), auth, 409),
        "unknown cut": (_cloud_payload("nope", {name: torch.ones(shape)}), auth, 409),
        "NaN": (_cloud_payload("stem", {name: torch.full(shape, float("nan"))}), auth, 422),
        "Inf": (_cloud_payload("stem", {name: torch.full(shape, float("inf"))}), auth, 422),
        "wrong shape": (_cloud_payload("stem", {name: torch.ones(1, 3, 2, 2)}), auth, 422),
        "batch over limit": (_cloud_payload("stem", {name: torch.ones((9, *shape[1:]))}), auth, 413),
        "no token": (good, {"Content-Type": MEDIA_TYPE}, 401),
        "wrong token": (good, {**auth, "Authorization": "Bearer nope"}, 401),
        "wrong content type": (good, {**auth, "Content-Type": "text/plain"}, 415),
    }
    details: dict[str, str] = {}
    with httpx.Client(base_url=cloud.url, timeout=30) as client:
        for label, (body, headers, status) in cases.items():
            response = client.post("/v1/tail", content=body, headers=headers)
            assert response.status_code == status, f"{label}: {response.status_code} {response.text}"
            assert response.headers["content-type"] == "application/problem+json", label
            details[label] = response.json()["detail"]
        assert client.post("/v1/tail", content=good, headers=auth).status_code == 200
    lying = {"Authorization": f"Bearer {TOKEN}", "Content-Type": MEDIA_TYPE, "Content-Length": str(10**10)}
    assert _raw_post(cloud.port, "/v1/tail", lying, good[:100]) == 413
    assert cloud.process.poll() is None
    assert "NaN" in details["NaN"] and "NaN or infinite" in details["Inf"]  # refused for the right reason
    assert "batch size 9 exceeds the limit of 4" in details["batch over limit"]
    assert "expected stem: float32[B, 8, 112, 112]" in details["wrong shape"]


def test_bad_input_limits_on_the_edge(logs: Path, stop_all: list[Service]) -> None:
    edge = start_service(
        "edge", [*TINY, "--cut", "output", "--max-upload-bytes", "100000", "--max-batch-size", "2"], logs
    )
    stop_all.append(edge)
    wait_until(edge)
    big = httpx.post(f"{edge.url}/v1/classify", content=b"\xff" * 200_000, headers={"content-type": "image/jpeg"})
    assert big.status_code == 413
    assert _raw_post(edge.port, "/v1/classify", {"Content-Type": "image/jpeg", "Content-Length": "9" * 12}, JPEG) == 413
    files = [("images", (f"{i}.jpg", JPEG)) for i in range(3)]
    assert httpx.post(f"{edge.url}/v1/classify/batch", files=files).status_code == 413
    assert _classify(edge.url).status_code == 200
