"""The torch-free edge (edge_lite) as a real process in front of a real cloud: logits within 1e-4 of torch.

``EDGE_LITE_PYTHON`` names the interpreter that runs the edge (default: this one); the slow test builds a
fresh venv without torch (/tmp/edge-venv) and runs the edge from there, skipping when it cannot be built.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from shared.models import load_model
from shared.onnx_export import export_split
from shared.preprocessing import decode_image
from shared.splitting import ModelGraph
from splitinfer.processes import Service, free_port, start_service, wait_until
from splitinfer.samples import encode_image, synthetic_image

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EDGE_VENV = Path("/tmp/edge-venv")


def start_edge_lite(
    python: str, onnx_dir: Path, cloud_url: str, logs: Path, codec: str = "fp32", engine: str = "onnxruntime"
) -> Service:
    port = free_port()
    log = logs / f"edge-lite-{port}.log"
    command = [python, "-m", "edge_lite", "--onnx-dir", str(onnx_dir), "--cloud-url", cloud_url]
    command += ["--port", str(port), "--codec", codec, "--engine", engine]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    if python == sys.executable:  # the test's venv runs the worktree; a fresh venv runs what it installed
        env["PYTHONPATH"] = str(ROOT)
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
