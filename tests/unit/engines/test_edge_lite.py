"""The torch-free edge's pieces against the torch ones: wire bytes, preprocessing, imports, install list."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edge_lite.preprocess import NumpyPreprocessor
from edge_lite.wire import decode_logits, encode_activations
from shared.errors import BadGateway
from shared.models import LITE0_PREPROCESSOR
from shared.preprocessing import ImagePreprocessor
from shared.protocol import encode_logits
from shared.wire import ExpectedTensor, decode_payload, encode_payload
from splitinfer.samples import synthetic_image

ROOT = Path(__file__).resolve().parents[3]
CODECS = [base + zstd for base in ("fp32", "fp16", "bf16", "int8") for zstd in ("", "+zstd")]


def _parts(data: bytes) -> tuple[int, dict[str, object], bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return length, json.loads(data[8 : 8 + length]), data[8 + length :]


@pytest.mark.parametrize("codec", CODECS)
def test_numpy_encoder_writes_the_torch_encoders_payload(codec: str) -> None:
    generator = torch.Generator().manual_seed(0)
    for tensor in (torch.randn(2, 64, 7, 7, generator=generator).relu(), torch.randn(3, 1000, generator=generator)):
        named = {"layer3_1_relu_1": tensor, "mask": tensor > 0, "index": (tensor * 3).long()}
        theirs = encode_payload(named, kind="activations", model="m", weights="sha256:w", cut="c", codec=codec)
        ours = encode_activations(
            {k: v.numpy() for k, v in named.items()}, model="m", weights="sha256:w", cut="c", codec=codec
        )
        # NOTE: safetensors writes its header maps in hash order, so two torch payloads of the same tensors
        # differ in key order; the header's content, its padded length and every data byte are equal.
        assert len(ours) == len(theirs)
        assert _parts(ours) == _parts(theirs)
        expected = [ExpectedTensor(k, v.dtype, ("B", *v.shape[1:])) for k, v in named.items()]
        decoded = decode_payload(ours, kind="activations", model="m", weights="sha256:w", expected=expected)
        reference = decode_payload(theirs, kind="activations", model="m", weights="sha256:w", expected=expected)
        for a, b in zip(decoded.tensors, reference.tensors, strict=True):
            assert torch.equal(a, b)


def test_numpy_encoder_writes_the_values_a_cut_carries_as_the_torch_encoder_does() -> None:
    tensor = torch.randn(2, 8, 3, 3, generator=torch.Generator().manual_seed(1))
    values = {"size": 2, "shape": torch.Size([2, 8]), "pair": (2, 7)}
    theirs = encode_payload(
        {"x": tensor}, kind="activations", model="m", weights="w", cut="c", codec="fp16", values=values
    )
    described = [
        {"name": "size", "kind": "int", "items": [2]},
        {"name": "shape", "kind": "size", "items": [2, 8]},
        {"name": "pair", "kind": "tuple", "items": [2, 7]},
    ]
    ours = encode_activations({"x": tensor.numpy()}, model="m", weights="w", cut="c", codec="fp16", values=described)
    assert _parts(ours) == _parts(theirs)


def test_numpy_encoder_is_deterministic() -> None:
    array = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    first = encode_activations({"x": array, "y": array}, model="m", weights="w", cut="c", codec="int8+zstd")
    assert first == encode_activations({"x": array, "y": array}, model="m", weights="w", cut="c", codec="int8+zstd")


def test_logits_reply_is_decoded_and_checked() -> None:
    logits = torch.randn(2, 10, generator=torch.Generator().manual_seed(1))
    body = encode_logits(logits, model="m", weights="sha256:w", cut="c")
    got = decode_logits(body, model="m", weights="sha256:w", cut="c", batch_size=2, num_classes=10)
    assert np.array_equal(got, logits.numpy())
    with pytest.raises(BadGateway, match="weights"):
        decode_logits(body, model="m", weights="sha256:other", cut="c", batch_size=2, num_classes=10)
    with pytest.raises(BadGateway, match="expected F32"):
        decode_logits(body, model="m", weights="sha256:w", cut="c", batch_size=1, num_classes=10)
    nan = encode_logits(torch.full((2, 10), float("nan")), model="m", weights="sha256:w", cut="c")
    with pytest.raises(BadGateway, match="NaN"):
        decode_logits(nan, model="m", weights="sha256:w", cut="c", batch_size=2, num_classes=10)
    with pytest.raises(BadGateway):
        decode_logits(body[:-4], model="m", weights="sha256:w", cut="c", batch_size=2, num_classes=10)


def test_a_logits_reply_for_another_cut_is_the_clouds_fault() -> None:
    """A cloud (or a proxy mixing replies) that answers with logits of another cut than the one sent: 502."""
    logits = torch.randn(1, 10, generator=torch.Generator().manual_seed(2))
    body = encode_logits(logits, model="m", weights="sha256:w", cut="stem")
    got = decode_logits(body, model="m", weights="sha256:w", cut="stem", batch_size=1, num_classes=10)
    assert np.array_equal(got, logits.numpy())
    with pytest.raises(BadGateway, match="cut 'stem'; expected 'block'"):
        decode_logits(body, model="m", weights="sha256:w", cut="block", batch_size=1, num_classes=10)


@pytest.mark.parametrize(
    "header",
    [b"[" * 30_000 + b"]" * 30_000, b'{"__metadata__": {}, "x": ' + b"9" * 5000 + b"}", b"[1, 2"],
    ids=["nested 30000 deep", "a 5000-digit number", "truncated"],
)
def test_a_logits_reply_whose_header_no_parser_reads_is_the_clouds_fault(header: bytes) -> None:
    """A broken or hostile cloud's reply is a 502, never a RecursionError's 500."""
    body = struct.pack("<Q", len(header)) + header + bytes(80)
    with pytest.raises(BadGateway, match="header"):
        decode_logits(body, model="m", weights="sha256:w", cut="c", batch_size=2, num_classes=10)


@pytest.mark.parametrize("preprocessor", [ImagePreprocessor(), LITE0_PREPROCESSOR], ids=["imagenet", "tflite"])
def test_numpy_preprocessing_equals_torchvision_to_the_bit(preprocessor: ImagePreprocessor) -> None:
    ours = NumpyPreprocessor.from_json(preprocessor.to_json())
    images = [synthetic_image(640, 480, seed=1), synthetic_image(300, 500, seed=2), synthetic_image(257, 256, seed=3)]
    images.append(Image.fromarray(np.full((224, 224, 3), 200, dtype=np.uint8)))
    for image in images:
        assert np.array_equal(ours.batch([image])[0], preprocessor(image).numpy())


def test_edge_lite_imports_no_torch() -> None:
    # NOTE: with what edge_lite.__main__ imports when it runs: the settings flags and splitinfer.serve.
    modules = "edge_lite.app, edge_lite.__main__, splitinfer.serve, splitinfer.settings_flags, splitinfer.failures"
    code = f"import sys, {modules}; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120).returncode == 0


def test_requirements_file_equals_the_extra() -> None:
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["edge-lite"]
    lines = (ROOT / "edge_lite" / "requirements.txt").read_text().splitlines()
    assert [line for line in lines if line and not line.startswith("#")] == extra
    assert not any(name.startswith("torch") for name in extra)
