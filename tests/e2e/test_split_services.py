"""Edge and cloud as real uvicorn processes on loopback: logits equal the unsplit model's."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from shared.models import load_model
from shared.preprocessing import decode_image
from splitinfer.processes import Service, start_service, wait_until
from splitinfer.samples import encode_image, synthetic_image

pytestmark = pytest.mark.e2e

EDGE_CUTS = {
    "input": "image",
    "layer3": "fp32",
    "output": "fp32",
    "layer1.0.bn2": "fp32+zstd",
    "layer2": "int8+zstd",
    "layer4": "budget10+ans",
}
LOSSY = ("int8", "budget")


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def services(weights_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Service]]:
    logs = tmp_path_factory.mktemp("logs")
    common = ["--model", "resnet18", "--weights", str(weights_file)]
    cloud = start_service("cloud", common, logs)
    running = {"cloud": cloud}
    try:
        for cut, codec in EDGE_CUTS.items():
            running[cut] = start_service(
                "edge", [*common, "--cut", cut, "--codec", codec, "--cloud-url", cloud.url], logs
            )
        running["mismatch"] = start_service(
            "edge", ["--model", "resnet18", "--weights", "none", "--cut", "layer3", "--cloud-url", cloud.url], logs
        )
        for name, service in running.items():
            if name != "mismatch":
                wait_until(service)
        wait_until(running["mismatch"], "/healthz")
        yield running
    finally:
        for service in running.values():
            service.stop()


@pytest.fixture(scope="module")
def reference(weights_file: Path) -> tuple[list[bytes], torch.Tensor]:
    loaded = load_model("resnet18", str(weights_file))
    images = [encode_image(synthetic_image(seed=seed)) for seed in range(3)]
    batch = loaded.preprocessor.batch([decode_image(b) for b in images])
    with torch.no_grad():
        return images, loaded.module(batch)


@pytest.mark.parametrize("cut", list(EDGE_CUTS))
def test_logits_equal_the_unsplit_model(
    cut: str, services: dict[str, Service], reference: tuple[list[bytes], torch.Tensor]
) -> None:
    images, expected = reference
    edge = services[cut]
    for index, image in enumerate(images):
        response = httpx.post(
            f"{edge.url}/v1/classify",
            params={"logits": "true", "top_k": 3},
            files={"image": ("a.jpg", image)},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        logits = torch.tensor(body["logits"])
        tolerance = 5e-2 if EDGE_CUTS[cut].startswith(LOSSY) else 1e-4
        assert float((logits - expected[index]).abs().max()) <= tolerance
        assert body["cut"] == cut and body["codec"] == ("none" if cut == "output" else EDGE_CUTS[cut])
        assert body["completed_on"] == ("edge" if cut == "output" else "cloud")
        assert (body["payload_bytes"] == 0) == (cut == "output")
        assert [p["index"] for p in body["predictions"]] == expected[index].topk(3).indices.tolist()
        assert "total;dur=" in response.headers["server-timing"]
        assert body["weights"] == "file"


def test_dct_codec_per_request(services: dict[str, Service], reference: tuple[list[bytes], torch.Tensor]) -> None:
    """``codec=dct10+ans`` on one request: the edge sends the transform-coded tensor, the cloud decodes it."""
    images, expected = reference
    edge = services["layer3"]
    plain = httpx.post(f"{edge.url}/v1/classify", files={"image": ("a.jpg", images[0])}, timeout=60).json()
    response = httpx.post(
        f"{edge.url}/v1/classify",
        params={"logits": "true", "codec": "dct10+ans"},
        files={"image": ("a.jpg", images[0])},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["codec"] == "dct10+ans" and body["payload_bytes"] < plain["payload_bytes"] / 3
    logits = torch.tensor(body["logits"])
    assert float((logits - expected[0]).norm() / expected[0].norm()) <= 0.05
    assert int(logits.argmax()) == int(expected[0].argmax())


def test_raw_body_and_batch_endpoint(services: dict[str, Service], reference: tuple[list[bytes], torch.Tensor]) -> None:
    images, expected = reference
    edge = services["layer3"]
    raw = httpx.post(f"{edge.url}/v1/classify?logits=true", content=images[0], headers={"content-type": "image/jpeg"})
    assert raw.status_code == 200
    assert float((torch.tensor(raw.json()["logits"]) - expected[0]).abs().max()) <= 1e-4
    files = [("images", (f"{i}.jpg", image)) for i, image in enumerate(images)]
    batch = httpx.post(f"{edge.url}/v1/classify/batch?logits=true", files=files, timeout=60)
    assert batch.status_code == 200, batch.text
    got = torch.tensor([r["logits"] for r in batch.json()["results"]])
    assert float((got - expected).abs().max()) <= 1e-4


def test_info_readiness_and_metrics(services: dict[str, Service]) -> None:
    edge, cloud = services["layer3"], services["cloud"]
    edge_info = httpx.get(f"{edge.url}/v1/info").json()
    cloud_info = httpx.get(f"{cloud.url}/v1/info").json()
    assert edge_info["weights_digest"] == cloud_info["weights_digest"]
    assert edge_info["cut"]["name"] == "layer3" and edge_info["codec"] == "fp32"
    assert httpx.get(f"{edge.url}/readyz").json()["cloud"] == "ok"
    httpx.post(f"{edge.url}/v1/classify", content=b"", headers={"content-type": "image/jpeg"})
    metrics = httpx.get(f"{edge.url}/metrics").text
    assert 'splitinfer_requests_total{method="POST",route="/v1/classify",status="200"}' in metrics
    assert 'splitinfer_requests_total{method="POST",route="/v1/classify",status="422"}' in metrics
    assert "splitinfer_payload_bytes_bucket" in metrics
    assert 'splitinfer_compute_seconds_count{stage="tail"}' in httpx.get(f"{cloud.url}/metrics").text


def test_mismatched_weights_are_named(
    services: dict[str, Service], reference: tuple[list[bytes], torch.Tensor]
) -> None:
    edge = services["mismatch"]
    ready = httpx.get(f"{edge.url}/readyz")
    assert ready.status_code == 503
    assert ready.headers["content-type"] == "application/problem+json"
    assert "model mismatch" in ready.json()["detail"] and "weights" in ready.json()["detail"]
    response = httpx.post(f"{edge.url}/v1/classify", files={"image": ("a.jpg", reference[0][0])}, timeout=60)
    assert response.status_code == 502  # the services disagree: not the client's to fix
    assert response.json()["title"] == "Cloud model mismatch"
    assert "weights" in response.json()["detail"]


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_bad_inputs_get_problem_json_and_service_continues(
    services: dict[str, Service], reference: tuple[list[bytes], torch.Tensor]
) -> None:
    edge, cloud = services["layer3"], services["cloud"]
    jpeg = reference[0][0]
    cases = {
        "empty body": ({"content": b"", "headers": {"content-type": "image/jpeg"}}, 422),
        "no content type": ({"content": b"abc"}, 415),
        "text file": ({"files": {"image": ("a.txt", b"hello world", "text/plain")}}, 415),
        "truncated jpeg": ({"files": {"image": ("a.jpg", jpeg[: len(jpeg) // 2])}}, 422),
        "0x0 png": ({"files": {"image": ("a.png", _png_header_only(0, 0))}}, 422),
        "bomb png": ({"files": {"image": ("a.png", _png_header_only(50_000, 50_000))}}, 413),
        "wrong field": ({"files": {"picture": ("a.jpg", jpeg)}}, 422),
        "top_k zero": ({"files": {"image": ("a.jpg", jpeg)}, "params": {"top_k": 0}}, 422),
    }
    for name, (request, status) in cases.items():
        response = httpx.post(f"{edge.url}/v1/classify", timeout=30, **request)  # type: ignore[arg-type]
        assert response.status_code == status, f"{name}: {response.status_code} {response.text}"
        assert response.headers["content-type"] == "application/problem+json", name
        body = response.json()
        assert body["status"] == status and body["detail"] and "Traceback" not in body["detail"], name
    garbage = httpx.post(
        f"{cloud.url}/v1/tail", content=b"\x00" * 64, headers={"content-type": "application/vnd.splitinfer+safetensors"}
    )
    assert garbage.status_code == 400 and garbage.headers["content-type"] == "application/problem+json"
    wrong_type = httpx.post(f"{cloud.url}/v1/tail", content=b"{}", headers={"content-type": "application/json"})
    assert wrong_type.status_code == 415
    ok = httpx.post(f"{edge.url}/v1/classify", files={"image": ("a.jpg", jpeg)}, timeout=30)
    assert ok.status_code == 200
    assert services["layer3"].process.poll() is None and cloud.process.poll() is None
