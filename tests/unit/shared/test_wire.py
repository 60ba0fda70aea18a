from __future__ import annotations

import contextlib
import json
import resource
import struct

import pytest
import safetensors.torch
import torch
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.codecs import ACTIVATION_CODECS
from shared.errors import (
    InvalidTensor,
    MalformedPayload,
    ModelMismatch,
    PayloadTooLarge,
    SplitInferError,
    UnsupportedMediaType,
)
from shared.wire import BATCH, ExpectedTensor, WireLimits, decode_payload, encode_payload, read_header

MODEL, WEIGHTS = "m", "sha256:abc"
ALL_CODECS = [c for base in ACTIVATION_CODECS for c in (base, f"{base}+zstd")]
LOSSLESS = {"fp32", "fp32+zstd"}
BIG_BATCH = WireLimits.for_batch(64)
DEFAULT_LIMITS = WireLimits()


def _expected(tensors: dict[str, torch.Tensor]) -> list[ExpectedTensor]:
    return [ExpectedTensor(n, t.dtype, (BATCH, *t.shape[1:])) for n, t in tensors.items()]


def _roundtrip(
    tensors: dict[str, torch.Tensor], codec: str, limits: WireLimits = BIG_BATCH
) -> tuple[bytes, list[torch.Tensor]]:
    data = encode_payload(tensors, kind="activations", model=MODEL, weights=WEIGHTS, cut="c", codec=codec)
    payload = decode_payload(
        data, kind="activations", model=MODEL, weights=WEIGHTS, expected=_expected(tensors), limits=limits
    )
    assert payload.cut == "c" and payload.codec == codec and list(payload.names) == list(tensors)
    return data, list(payload.tensors)


def _activation(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.relu(torch.randn(shape, generator=torch.Generator().manual_seed(seed)))


SHAPES = [(1, 16), (3, 8, 5), (2, 32, 7, 7), (1, 4, 3, 5, 5), (64, 16, 4, 4)]


@pytest.mark.parametrize("codec", ALL_CODECS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_roundtrip_every_codec(codec: str, shape: tuple[int, ...]) -> None:
    original = _activation(shape)
    _, (decoded,) = _roundtrip({"t": original}, codec)
    assert decoded.dtype == original.dtype and decoded.shape == original.shape
    if codec in LOSSLESS:
        assert torch.equal(decoded, original)
    else:
        bound = {"fp16": 1e-3, "bf16": 8e-3, "int8": 1 / 255}[codec.split("+")[0]]
        assert float((decoded - original).abs().max()) <= bound * float(original.abs().max()) + 1e-6


@pytest.mark.parametrize("codec", ALL_CODECS)
@pytest.mark.parametrize("batch", [1, 2, 7, 64])
def test_batch_sizes_and_memory_layouts(codec: str, batch: int) -> None:
    base = _activation((batch, 8, 6, 6), seed=batch)
    layouts = {
        "channels_last": base.to(memory_format=torch.channels_last),
        "transposed": base.transpose(2, 3),
        "sliced": _activation((batch, 16, 6, 6))[:, ::2],
    }
    for name, tensor in layouts.items():
        assert not tensor.is_contiguous()
        _, (decoded,) = _roundtrip({"t": tensor}, codec)
        assert decoded.is_contiguous()
        assert decoded.shape == tensor.shape, name
        if codec in LOSSLESS:
            assert torch.equal(decoded, tensor), name


@pytest.mark.parametrize("codec", ALL_CODECS)
def test_non_float_and_half_tensors_travel_unchanged(codec: str) -> None:
    tensors = {
        "mask": torch.tensor([[True, False, True]]),
        "index": torch.arange(6, dtype=torch.int64).reshape(2, 3)[:1],
        "half": torch.randn(1, 4, dtype=torch.float16),
    }
    _, decoded = _roundtrip(tensors, codec)
    assert torch.equal(decoded[0], tensors["mask"])
    assert torch.equal(decoded[1], tensors["index"])
    assert decoded[2].dtype == torch.float16
    if codec.split("+")[0] in ("fp32", "fp16"):
        assert torch.equal(decoded[2], tensors["half"])


def test_multi_tensor_payload_keeps_order() -> None:
    tensors = {"skip": _activation((2, 4, 3, 3), 1), "branch": _activation((2, 4, 3, 3), 2)}
    _, decoded = _roundtrip(tensors, "fp32+zstd")
    assert all(torch.equal(a, b) for a, b in zip(decoded, tensors.values(), strict=True))


def test_int8_zstd_is_small_for_sparse_activations() -> None:
    tensor = _activation((1, 512, 7, 7))
    fp32, _ = _roundtrip({"t": tensor}, "fp32")
    int8z, _ = _roundtrip({"t": tensor}, "int8+zstd")
    assert len(int8z) < 0.3 * len(fp32)


def test_header_is_documented_metadata() -> None:
    data = encode_payload(
        {"t": torch.zeros(1, 2)}, kind="activations", model=MODEL, weights=WEIGHTS, cut="c", codec="fp16"
    )
    metadata, entries = read_header(data, WireLimits())
    assert metadata["format"] == "splitinfer" and metadata["version"] == "1"
    assert metadata["model"] == MODEL and metadata["weights"] == WEIGHTS and metadata["cut"] == "c"
    assert json.loads(metadata["tensors"]) == [{"name": "t", "dtype": "float32", "shape": [1, 2]}]
    assert entries["t"]["dtype"] == torch.float16
    assert safetensors.torch.load(data)["t"].dtype == torch.float16  # any safetensors reader can open it


# ------------------------------------------------------------------ validation


def _payload(tensor: torch.Tensor | None = None, **overrides: str) -> bytes:
    tensor = torch.ones(2, 3) if tensor is None else tensor
    fields = {"model": MODEL, "weights": WEIGHTS, "cut": "c", "codec": "fp32"} | overrides
    return encode_payload({"t": tensor}, kind="activations", **fields)  # type: ignore[arg-type]


EXPECTED = [ExpectedTensor("t", torch.float32, (BATCH, 3))]


def _decode(data: bytes, limits: WireLimits = DEFAULT_LIMITS, **kwargs: object) -> object:
    fields: dict[str, object] = {"kind": "activations", "model": MODEL, "weights": WEIGHTS, "expected": EXPECTED}
    return decode_payload(data, limits=limits, **(fields | kwargs))  # type: ignore[arg-type]


def _raw(header: dict[str, object], body: bytes = b"") -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + body


GOOD_META = {
    "format": "splitinfer",
    "version": "1",
    "kind": "activations",
    "model": MODEL,
    "weights": WEIGHTS,
    "cut": "c",
    "codec": "fp32",
    "tensors": json.dumps([{"name": "t", "dtype": "float32", "shape": [2, 3]}]),
}


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"", MalformedPayload, "at least 8"),
        (struct.pack("<Q", 10**9) + b"{}", PayloadTooLarge, "header declares"),
        (struct.pack("<Q", 100) + b"{}", MalformedPayload, "only 2 follow"),
        (_raw({"__metadata__": GOOD_META}).replace(b"{", b"[", 1), MalformedPayload, "not valid JSON|not a JSON"),
        (_raw({"t": {}}), MalformedPayload, "__metadata__"),
        (_payload(model="other"), ModelMismatch, "model 'other'"),
        (_payload(weights="sha256:def"), ModelMismatch, "weights 'sha256:def'"),
        (_raw({"__metadata__": GOOD_META | {"codec": "fp8"}}), UnsupportedMediaType, "unknown codec 'fp8'"),
        (_payload(torch.ones(2, 4)), InvalidTensor, r"shape \[2, 4\]; expected t: float32\[B, 3\]"),
        (_payload(torch.ones(2, 3, dtype=torch.float64)), InvalidTensor, "is float64"),
        (_payload(torch.full((1, 3), float("nan"))), InvalidTensor, "NaN"),
        (_payload(torch.full((1, 3), float("inf"))), InvalidTensor, "NaN or infinite"),
        (_payload(torch.ones(40, 3)), PayloadTooLarge, "batch size 40 exceeds the limit of 32"),
        (_payload(torch.ones(0, 3)), InvalidTensor, "batch size 0"),
        (_raw({"__metadata__": GOOD_META, "t": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}}, b"\0" * 20),
         InvalidTensor, "needs 24 bytes but 20"),
        (_raw({"__metadata__": GOOD_META, "t": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}),
         MalformedPayload, "outside the 0-byte body"),
        (_raw({"__metadata__": GOOD_META, "t": {"dtype": "X9", "shape": [2], "data_offsets": [0, 0]}}),
         UnsupportedMediaType, "dtype 'X9'"),
        (_raw({"__metadata__": GOOD_META, "t": {"dtype": "F32", "shape": [-2, 3], "data_offsets": [0, 0]}}),
         MalformedPayload, "non-negative"),
        (_raw({"__metadata__": GOOD_META | {"version": "9"}}), UnsupportedMediaType, "protocol version '9'"),
        (_raw({"__metadata__": GOOD_META | {"tensors": json.dumps([{"name": "t", "dtype": ["x"], "shape": [2, 3]}])}}),
         MalformedPayload, "entries need a name, dtype and shape"),
    ],
)  # fmt: skip
def test_bad_payloads_get_typed_errors(data: bytes, error: type[SplitInferError], message: str) -> None:
    with pytest.raises(error, match=message):
        _decode(data)


def test_status_codes_of_the_wire_errors() -> None:
    statuses = {MalformedPayload: 400, ModelMismatch: 409, PayloadTooLarge: 413}
    statuses |= {UnsupportedMediaType: 415, InvalidTensor: 422}
    assert {error: error.status for error in statuses} == statuses


def test_payload_size_limit() -> None:
    with pytest.raises(PayloadTooLarge, match="limit is 100"):
        _decode(_payload(), WireLimits(max_payload_bytes=100))


def test_unknown_cut_is_a_mismatch() -> None:
    with pytest.raises(ModelMismatch, match="cut 'c' is not a valid cut"):
        _decode(_payload(), expected={"other": EXPECTED})


def _zstd_bomb(size: int) -> bytes:
    """A zstd frame of ``size`` zero bytes, built a MiB at a time (so building it does not raise the peak RSS)."""
    compressor = zstandard.ZstdCompressor(level=1).compressobj(size=size)
    chunk = b"\0" * (1024 * 1024)
    frame = b"".join(compressor.compress(chunk) for _ in range(size // len(chunk)))
    return frame + compressor.flush()


def test_zstd_bomb_is_refused_before_decompressing() -> None:
    bomb = _zstd_bomb(256 * 1024 * 1024)
    assert len(bomb) < 100_000
    meta = GOOD_META | {"codec": "fp32+zstd"}
    data = _raw(
        {"__metadata__": meta, "t": {"dtype": "U8", "shape": [len(bomb)], "data_offsets": [0, len(bomb)]}}, bomb
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InvalidTensor, match="declares 268435456 decompressed bytes; expected 24"):
        _decode(data)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024  # KiB: nothing big allocated


def test_declared_shapes_over_the_decoded_limit_are_refused() -> None:
    huge = [ExpectedTensor("t", torch.float32, (BATCH, None))]
    meta = GOOD_META | {
        "codec": "fp32+zstd",
        "tensors": json.dumps([{"name": "t", "dtype": "float32", "shape": [1, 10**10]}]),
    }
    frame = zstandard.ZstdCompressor().compress(b"\0" * 16)
    data = _raw(
        {"__metadata__": meta, "t": {"dtype": "U8", "shape": [len(frame)], "data_offsets": [0, len(frame)]}}, frame
    )
    with pytest.raises(PayloadTooLarge, match="decodes to 40000000000 bytes"):
        _decode(data, expected=huge)


VALID = _payload(torch.rand(4, 3)) + b""
VALID_ZSTD = _payload(torch.rand(4, 3), codec="int8+zstd")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_random_bytes_only_raise_typed_errors(data: bytes) -> None:
    with pytest.raises(SplitInferError):
        _decode(data)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([VALID, VALID_ZSTD]),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(0, 10_000),
)
def test_mutated_payloads_only_raise_typed_errors(base: bytes, flips: list[tuple[int, int]], cut_at: int) -> None:
    data = bytearray(base)
    for position, value in flips:
        data[position % len(data)] = value
    data = data[: max(8, len(data) - cut_at % 64)]
    limits = WireLimits(max_batch=8, max_payload_bytes=4096, max_decoded_bytes=4096)
    expected = [ExpectedTensor("t", torch.float32, (BATCH, 3))]
    with contextlib.suppress(SplitInferError):  # anything else fails the test
        _decode(bytes(data), limits, expected=expected)
