"""The torch-free edge (edge_lite) as a real process in front of a real cloud: logits within 1e-4 of torch.

``EDGE_LITE_PYTHON`` names the interpreter that runs the edge (default: this one); the slow test builds a
fresh venv without torch (/tmp/edge-venv) and runs the edge from there, skipping when it cannot be built.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from shared.models import load_model
from shared.onnx_export import export_split
from shared.onnx_manifest import file_digest
from shared.preprocessing import decode_image
from shared.splitting import ModelGraph
from splitinfer.processes import Service, free_port, start_service, wait_until
from splitinfer.samples import encode_image, synthetic_image
from tests.support.raw_http import exchange, hold_served_connections

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EDGE_VENV = Path("/tmp/edge-venv")


def _env(python: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    if python == sys.executable:  # the test's venv runs the worktree; a fresh venv runs what it installed
        env["PYTHONPATH"] = str(ROOT)
    return env


def start_edge_lite(
    python: str,
    onnx_dir: Path,
    cloud_url: str,
    logs: Path,
    codec: str = "fp32",
    engine: str = "onnxruntime",
    extra: Sequence[str] = (),
) -> Service:
    port = free_port()
    log = logs / f"edge-lite-{port}.log"
    command = [python, "-m", "edge_lite", "--onnx-dir", str(onnx_dir), "--cloud-url", cloud_url]
    command += ["--port", str(port), "--codec", codec, "--engine", engine, *extra]
    env = _env(python)
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=logs, start_new_session=True
        )
    return Service("edge-lite", port, process, log, command)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Service, Path, torch.nn.Module]]:
    torch.manual_seed(321)
    import torchvision

    folder = tmp_path_factory.mktemp("lite")
    weights = folder / "resnet18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    loaded = load_model("resnet18", str(weights))
    graph = ModelGraph(loaded.module, loaded.input_shape)
    export_split(
        graph, "layer3", model=loaded.name, weights=loaded.digest, preprocessing=loaded.preprocessor.to_json()
    ).write(folder / "export")
    cloud = start_service("cloud", ["--model", "resnet18", "--weights", str(weights)], folder)
    try:
        wait_until(cloud)
        yield folder / "export", cloud, folder, loaded.module
    finally:
        cloud.stop()


def _check_logits(edge: Service, model: torch.nn.Module, engine: str = "onnxruntime") -> None:
    loaded_pre = load_model("resnet18", "none").preprocessor
    for seed in range(3):
        image = encode_image(synthetic_image(seed=seed))
        response = httpx.post(
            f"{edge.url}/v1/classify", params={"logits": "true"}, files={"image": ("a.jpg", image)}, timeout=60
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["engine"] == engine and body["cut"] == "layer3" and body["completed_on"] == "cloud"
        with torch.no_grad():
            want = model(loaded_pre(decode_image(image))[None])[0].numpy()
        got = np.asarray(body["logits"], dtype=np.float32)
        assert np.abs(got - want).max() <= 1e-4
        assert body["predictions"][0]["index"] == int(want.argmax())


def _uses_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def test_edge_lite_serves_classify_within_1e4_of_torch(setup: tuple[Path, Service, Path, torch.nn.Module]) -> None:
    export, cloud, logs, model = setup
    python = os.environ.get("EDGE_LITE_PYTHON", sys.executable)
    edge = start_edge_lite(python, export, cloud.url, logs)
    try:
        wait_until(edge)
        _check_logits(edge, model)
        assert not _uses_torch(edge.process.pid)
        # a client's mistakes are 4xx problems
        bad = httpx.post(f"{edge.url}/v1/classify", content=b"not an image", headers={"content-type": "image/jpeg"})
        assert bad.status_code == 415 and bad.headers["content-type"] == "application/problem+json"
        assert (
            httpx.post(f"{edge.url}/v1/classify", content=b"{}", headers={"content-type": "text/plain"}).status_code
            == 415
        )
        assert "splitinfer_requests_total" in httpx.get(f"{edge.url}/metrics").text
    finally:
        edge.stop()


def test_edge_lite_on_openvino_in_front_of_an_openvino_cloud_within_1e4_of_torch(
    setup: tuple[Path, Service, Path, torch.nn.Module],
) -> None:
    pytest.importorskip("openvino", reason="engine openvino needs the `openvino` extra")
    export, _, logs, model = setup
    weights = logs / "resnet18.pt"
    cloud = start_service(
        "cloud",
        ["--model", "resnet18", "--weights", str(weights), "--engine", "openvino", "--onnx-dir", str(export)],
        logs,
    )
    edge: Service | None = None
    try:
        wait_until(cloud)
        edge = start_edge_lite(sys.executable, export, cloud.url, logs, engine="openvino")
        wait_until(edge)
        _check_logits(edge, model, engine="openvino")
        assert not _uses_torch(edge.process.pid)
        info = httpx.get(f"{edge.url}/v1/info").json()
        assert (info["engine"], info["precision"]) == ("openvino", "f32")
    finally:
        if edge is not None:
            edge.stop()
        cloud.stop()


def test_edge_lite_refuses_a_tampered_export(
    setup: tuple[Path, Service, Path, torch.nn.Module], tmp_path: Path
) -> None:
    export, cloud, logs, _ = setup
    for name in ("manifest.json", "head.onnx"):
        (tmp_path / name).write_bytes((export / name).read_bytes())
    data = bytearray((tmp_path / "head.onnx").read_bytes())
    data[-1] ^= 1
    (tmp_path / "head.onnx").write_bytes(bytes(data))
    edge = start_edge_lite(sys.executable, tmp_path, cloud.url, logs)
    assert edge.process.wait(60) != 0
    assert "does not match the digest" in edge.output()


@pytest.mark.slow
def test_edge_lite_in_a_fresh_venv_without_torch(setup: tuple[Path, Service, Path, torch.nn.Module]) -> None:
    """Builds /tmp/edge-venv (project --no-deps + edge_lite/requirements.txt) unless it is there already."""
    python = EDGE_VENV / "bin" / "python"
    if not python.exists():
        steps = [
            [sys.executable, "-c", "import venv; venv.create('/tmp/edge-venv', with_pip=True)"],
            [str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(ROOT)],
            [str(python), "-m", "pip", "install", "--quiet", "-r", str(ROOT / "edge_lite" / "requirements.txt")],
        ]
        for step in steps:
            if subprocess.run(step, capture_output=True, timeout=900).returncode != 0:
                pytest.skip(f"cannot build {EDGE_VENV} (offline?)")
    check = subprocess.run([str(python), "-c", "import torch"], capture_output=True)
    assert check.returncode != 0, "the edge venv must not hold torch"
    export, cloud, logs, model = setup
    edge = start_edge_lite(str(python), export, cloud.url, logs)
    try:
        wait_until(edge)
        _check_logits(edge, model)
    finally:
        edge.stop()


CAP = 8
KEEP_ALIVE_S = 3.0  # NOTE: the held connections must outlive a stalled runner while the cap is checked
_TIMEOUT_S = 10.0
_GET = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def _exchange(conn: socket.socket, request: bytes) -> tuple[str, dict[str, str], bytes]:
    return exchange(conn, request, _TIMEOUT_S)


def _closed_within(conn: socket.socket, seconds: float) -> float:
    """Seconds until the server closed ``conn`` (which sends nothing more), failing after ``seconds``."""
    start = time.monotonic()
    conn.settimeout(seconds)
    assert conn.recv(1) == b""
    return time.monotonic() - start


def test_edge_lite_is_served_as_the_services_are(setup: tuple[Path, Service, Path, torch.nn.Module]) -> None:
    """HEAD on GET routes, the connection cap's problem+json 503, the request-head deadline, problem+json for
    requests the parser refuses, and draining on SIGTERM: what ``splitinfer.serve`` gives every service."""
    export, cloud, logs, _ = setup
    extra = ["--max-connections", str(CAP), "--keep-alive-s", str(KEEP_ALIVE_S), "--drain-s", "3"]
    edge = start_edge_lite(sys.executable, export, cloud.url, logs, extra=extra)
    try:
        wait_until(edge)
        head = httpx.head(f"{edge.url}/healthz")
        assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == "15"
        assert httpx.head(f"{edge.url}/v1/info").status_code == 200
        assert httpx.head(f"{edge.url}/v1/classify").status_code == 405

        with ExitStack() as stack:
            held = hold_served_connections(stack, edge.port, CAP, _GET, _TIMEOUT_S)
            with socket.create_connection(("127.0.0.1", edge.port)) as beyond:
                status, headers, body = _exchange(beyond, _GET)
                assert status == "HTTP/1.1 503 Service Unavailable"
                assert headers["content-type"] == "application/problem+json" and headers["retry-after"] == "1"
                detail = json.loads(body)["detail"]
                assert detail == f"the server is serving {CAP} connections, its limit; retry shortly"
                assert _closed_within(beyond, _TIMEOUT_S) < _TIMEOUT_S
            # HEAD through the real server on a kept-alive connection: no body, the next answer follows at once
            status, headers, _ = _exchange(held[0], b"HEAD /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert status == "HTTP/1.1 200 OK" and headers["content-length"] == "15"
            status, _, body = _exchange(held[0], _GET)
            assert status == "HTTP/1.1 200 OK" and json.loads(body) == {"status": "ok"}
            # NOTE: the refusal never reached the request metrics; it has its own counter, as in the services
            status, _, body = _exchange(held[0], b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert status == "HTTP/1.1 200 OK"
            assert 'splitinfer_connections_refused_total{how="answered"} 1.0' in body.decode(), body.decode()

        # a connection that never sends a request head, and one that stalls half-way through it, are closed
        # after the keep-alive deadline
        with socket.create_connection(("127.0.0.1", edge.port)) as idle:
            assert KEEP_ALIVE_S * 0.5 < _closed_within(idle, _TIMEOUT_S) < _TIMEOUT_S
        with socket.create_connection(("127.0.0.1", edge.port)) as stalled:
            stalled.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            assert KEEP_ALIVE_S * 0.5 < _closed_within(stalled, _TIMEOUT_S) < _TIMEOUT_S

        # a request uvicorn's parser refuses gets the services' problem+json 400
        with socket.create_connection(("127.0.0.1", edge.port)) as bad:
            bad_length = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: x\r\n\r\n"
            status, headers, body = _exchange(bad, bad_length)
            assert status == "HTTP/1.1 400 Bad Request" and headers["content-type"] == "application/problem+json"
            assert json.loads(body)["status"] == 400

        # SIGTERM: /readyz answers 503 while draining, then the process ends cleanly
        assert httpx.get(f"{edge.url}/readyz").status_code == 200
        os.killpg(edge.process.pid, signal.SIGTERM)
        draining = httpx.get(f"{edge.url}/readyz")
        assert draining.status_code == 503 and draining.json()["detail"] == "the service is shutting down"
        # NOTE: uvicorn re-raises the handled signal once it has shut down cleanly, so -SIGTERM is a clean exit.
        assert edge.process.wait(_TIMEOUT_S) in (0, -signal.SIGTERM)
    finally:
        edge.stop()


def _run_edge_lite(onnx_dir: Path, cloud_url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "edge_lite", "--onnx-dir", str(onnx_dir), "--cloud-url", cloud_url]
    command += ["--port", str(free_port()), "--drain-s", "0", *extra]
    return subprocess.run(command, capture_output=True, text=True, env=_env(sys.executable), timeout=120)


def _one_line_failure(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("python -m edge_lite: error: ") and last.endswith(" (--debug shows the traceback)")
    return last


@pytest.mark.parametrize("kind", ["random", "text"])
def test_edge_lite_with_a_head_that_is_not_onnx_fails_to_start_in_one_line(
    setup: tuple[Path, Service, Path, torch.nn.Module], tmp_path: Path, kind: str
) -> None:
    """The head's file is the torch-free edge's weights: random bytes, or a text file, under a manifest whose
    digest matches them (so that ONNX Runtime is the one to refuse them)."""
    export, cloud, _, _ = setup
    head = tmp_path / "head.onnx"
    if kind == "random":
        head.write_bytes(np.random.default_rng(0).bytes(4096))
    else:
        head.write_text("these are not weights\nbut a text file\n")
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["head"]["sha256"] = file_digest(head)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    last = _one_line_failure(_run_edge_lite(tmp_path, cloud.url))
    assert last.startswith(
        f"python -m edge_lite: error: the service did not start: UnloadableModel: '{head}' is not an ONNX model "
        "ONNX Runtime can load (damaged, not ONNX, or made for a newer engine): InvalidProtobuf: "
    ), last
    with_debug = _run_edge_lite(tmp_path, cloud.url, "--debug")
    assert with_debug.returncode != 0 and "Traceback" in with_debug.stderr


def test_edge_lite_with_a_text_manifest_or_bad_settings_fails_in_one_line(
    setup: tuple[Path, Service, Path, torch.nn.Module], tmp_path: Path
) -> None:
    _, cloud, _, _ = setup
    (tmp_path / "manifest.json").write_text("not a manifest\nbut a text file\n")
    last = _one_line_failure(_run_edge_lite(tmp_path, cloud.url))
    assert "the service did not start: ValueError: " in last and "is not JSON" in last
    last = _one_line_failure(_run_edge_lite(tmp_path, cloud.url, "--max-connections", "0"))
    assert last.startswith("python -m edge_lite: error: invalid settings: max-connections: "), last
