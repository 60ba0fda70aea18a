"""Models beyond torchvision through real edge and cloud processes: EfficientNet-Lite0 with its real
ImageNet weights and TF-style preprocessing, and a ``package.module:factory`` model with its own input
size, mean/std and labels, served without ``--cut``."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from shared.models import LITE0, ModelOptions, load_model
from splitinfer.processes import Service, start_service, wait_until

pytestmark = pytest.mark.e2e

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
CUSTOM = "tests.fixture_models:custom_256"
CUSTOM_FLAGS = ["--input-size", "256", "--resize-size", "288", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"]
CUSTOM_LABELS = ["alpha", "beta", "gamma", "delta", "epsilon"]


def _jpeg(name: str) -> bytes:
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(getattr(data, name)()).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def lite0(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    pytest.importorskip("efficientnet_lite_pytorch")
    logs = tmp_path_factory.mktemp("logs")
    common = ["--model", LITE0, "--weights", "DEFAULT"]
    cloud = start_service("cloud", common, logs)
    edge = start_service("edge", [*common, "--cloud-url", cloud.url], logs)
    try:
        wait_until(cloud)
        wait_until(edge)
        yield edge
    finally:
        edge.stop()
        cloud.stop()


def test_lite0_real_photo_gets_a_cat_at_every_cut_and_codec(lite0: Service) -> None:
    info = httpx.get(f"{lite0.url}/v1/info").json()
    assert info["weights"] == "pretrained" and "efficientnet-lite0" in info["weights_source"]
    assert info["preprocessing"]["mean"] == [127.0] * 3 and info["preprocessing"]["pixel_scale"] == 255.0
    middle = info["cut"]["name"]  # no --cut: the single-tensor cut nearest half the FLOPs
    assert 0.2 < info["cut"]["head_flops_share"] < 0.8 and info["cut"]["values"], info["cut"]
    image = _jpeg("chelsea")
    routes = [("input", "image"), (middle, "fp16"), (middle, "int8"), ("output", "fp32")]
    for cut, codec in routes:
        response = httpx.post(
            f"{lite0.url}/v1/classify",
            params={"cut": cut, "codec": codec, "top_k": 3},
            files={"image": ("chelsea.jpg", image)},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        top = body["predictions"][0]
        assert top["index"] in CAT_CLASSES, (cut, codec, body["predictions"])
        assert top["label"] in ("tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat")
        assert body["cut"] == cut and body["completed_on"] == ("edge" if cut == "output" else "cloud")


@pytest.fixture(scope="module")
def custom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Service]]:
    logs = tmp_path_factory.mktemp("logs")
    labels = tmp_path_factory.mktemp("labels") / "labels.txt"
    labels.write_text("\n".join(CUSTOM_LABELS) + "\n")
    common = ["--model", CUSTOM, "--weights", "none", *CUSTOM_FLAGS]
    cloud = start_service("cloud", common, logs)
    running = {"cloud": cloud}
    try:
        running["edge"] = start_service("edge", [*common, "--labels-file", str(labels), "--cloud-url", cloud.url], logs)
        # NOTE: same model and weights, different normalization: /readyz must refuse it.
        other = [*common[:-4], "--mean", "0.4,0.4,0.4", "--std", "0.25,0.25,0.25", "--cloud-url", cloud.url]
        running["mismatch"] = start_service("edge", other, logs)
        wait_until(cloud)
        wait_until(running["edge"])
        wait_until(running["mismatch"], "/healthz")
        yield running
    finally:
        for service in running.values():
            service.stop()


def test_factory_model_with_its_own_preprocessing_and_labels(custom: dict[str, Service]) -> None:
    edge = custom["edge"]
    info = httpx.get(f"{edge.url}/v1/info").json()
    assert info["preprocessing"]["crop_size"] == 256 and info["preprocessing"]["std"] == [0.25] * 3
    assert info["labels"] == len(CUSTOM_LABELS)
    loaded = load_model(
        CUSTOM,
        "none",
        options=ModelOptions(
            preprocessing={"crop_size": 256, "resize_size": 288, "mean": (0.5,) * 3, "std": (0.25,) * 3}
        ),
    )
    graph = loaded.graph()
    assert info["cut"]["name"] == graph.default_cut().name  # no --cut given
    image = _jpeg("coffee")
    from shared.preprocessing import decode_image

    with torch.no_grad():
        expected = loaded.module(loaded.preprocessor.batch([decode_image(image)]))[0]
    response = httpx.post(
        f"{edge.url}/v1/classify", params={"logits": "true", "codec": "fp32"}, files={"image": ("c.jpg", image)}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["completed_on"] == "cloud"
    assert float((torch.tensor(body["logits"]) - expected).abs().max()) <= 1e-5
    assert body["predictions"][0]["label"] == CUSTOM_LABELS[int(expected.argmax())]


def test_repeated_module_names_resolve_the_same_by_name_and_index(custom: dict[str, Service]) -> None:
    """``act`` runs twice: its two cuts are ``act`` and ``act#2``, on the edge and the cloud alike."""
    edge = custom["edge"]
    loaded = load_model(CUSTOM, "none", options=ModelOptions(preprocessing={"crop_size": 256}))
    names = [c.name for c in loaded.graph().cuts]
    assert len(set(names)) == len(names) and "act" in names and "act#2" in names
    image = _jpeg("coffee")
    seen = {}
    for cut in ("act#2", str(names.index("act#2")), "act", str(names.index("act"))):
        response = httpx.post(
            f"{edge.url}/v1/classify",
            params={"cut": cut, "codec": "fp32", "logits": "true"},
            files={"image": ("c.jpg", image)},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["cut"] == ("act#2" if cut in ("act#2", str(names.index("act#2"))) else "act")
        seen[cut] = body["logits"]
    assert len({str(v) for v in seen.values()}) == 1  # every cut gives the same logits


def test_preprocessing_mismatch_keeps_the_edge_unready(custom: dict[str, Service]) -> None:
    ready = httpx.get(f"{custom['mismatch'].url}/readyz")
    assert ready.status_code == 503
    assert "preprocessing mismatch" in ready.json()["detail"]


def test_labels_file_fits_the_model(tmp_path: Path) -> None:
    from edge_service.runtime import EdgeModel
    from shared.preprocessing import ImageLimits

    labels = tmp_path / "labels.txt"
    labels.write_text("just\ntwo\n")
    loaded = load_model(CUSTOM, "none", options=ModelOptions(preprocessing={"crop_size": 256}, labels_file=labels))
    with pytest.raises(ValueError, match="2 labels for a model with 5 classes"):
        EdgeModel(loaded, ImageLimits())
    from cloud_service.runtime import CloudModel

    with pytest.raises(ValueError, match="2 labels for a model with 5 classes"):
        CloudModel(loaded)  # NOTE: the cloud names no class, but the file is as wrong there
