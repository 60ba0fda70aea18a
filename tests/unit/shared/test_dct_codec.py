"""The dctN+ans codec (spatial transform coding): round trips, its error budget, and hostile payloads."""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.codecs import parse_codec_name
from shared.errors import InvalidTensor, MalformedPayload, PayloadTooLarge, SplitInferError, UnsupportedMediaType
from shared.transform import BANDS, band_index, dct2, idct2
from shared.wire import WireLimits
from tests.support.payloads import (
    assert_huge_declaration_refused,
    decode_one,
    encode_one,
    rebuild,
)

SHAPES = [(1, 16), (3, 8, 5), (2, 32, 7, 7), (1, 4, 3, 5, 5), (1, 6, 1, 1), (2, 3, 14, 14)]


def _activation(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.randn(shape[:2] + (1,) * (len(shape) - 2), generator=generator)
    return torch.randn(shape, generator=generator) + offsets


def _smooth(shape: tuple[int, int, int, int], seed: int = 0) -> torch.Tensor:
    """Maps whose neighbours correlate (a blurred random field), like a convolutional network's activations."""
    noise = _activation(shape, seed)
    kernel = torch.ones(shape[1], 1, 3, 3) / 9
    return torch.nn.functional.conv2d(noise, kernel, padding=1, groups=shape[1])


def _relative_errors(decoded: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    return (decoded - original).flatten(1).norm(dim=1) / original.flatten(1).norm(dim=1)


def test_the_transform_is_orthonormal_and_inverts() -> None:
    values = _activation((2, 5, 14, 9))
    coefficients = dct2(values)
    assert torch.allclose(idct2(coefficients), values, atol=1e-5)
    assert torch.allclose(coefficients.flatten(2).norm(dim=2), values.flatten(2).norm(dim=2), rtol=1e-5)
    bands = band_index(14, 9)
    assert int(bands[0, 0]) == 0 and int(bands.max()) == BANDS - 1 and int((bands == 0).sum()) == 1


@pytest.mark.parametrize("permille", [10, 50, 200])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_roundtrip_meets_the_error_budget_per_sample(permille: int, shape: tuple[int, ...]) -> None:
    original = _activation(shape, seed=permille)
    decoded = decode_one(encode_one(original, f"dct{permille}+ans"), shape)
    assert decoded.dtype == original.dtype and decoded.shape == original.shape
    assert bool((_relative_errors(decoded, original) <= permille / 1000 + 1e-6).all())


def test_fp16_activations_come_back_as_fp16() -> None:
    original = _activation((1, 4, 6, 6)).half()
    assert decode_one(encode_one(original, "dct20+ans"), (1, 4, 6, 6), dtype=torch.float16).dtype == torch.float16


def test_looser_budgets_spend_fewer_bytes() -> None:
    original = _smooth((1, 64, 14, 14), seed=4)
    sizes = [len(encode_one(original, f"dct{n}+ans")) for n in (10, 50, 200)]
    assert sizes[0] > sizes[1] > sizes[2]


def test_on_correlated_maps_it_beats_budget_at_the_same_error() -> None:
    original = _smooth((1, 112, 14, 14), seed=5)
    for permille in (20, 50):
        dct = encode_one(original, f"dct{permille}+ans")
        budget = encode_one(original, f"budget{permille}+ans")
        assert len(dct) < 0.9 * len(budget)
        assert float(_relative_errors(decode_one(dct, (1, 112, 14, 14)), original).max()) <= permille / 1000 + 1e-6


@pytest.mark.parametrize(("name", "parsed"), [("dct20+ans", ("dct20", "ans")), ("dct500+ans", ("dct500", "ans"))])
def test_codec_names(name: str, parsed: tuple[str, str]) -> None:
    assert parse_codec_name(name) == parsed


@pytest.mark.parametrize("name", ["dct0+ans", "dct501+ans", "dct20", "dct20+zstd", "dct+ans", "dct020+ans"])
def test_undefined_names_are_415(name: str) -> None:
    with pytest.raises(UnsupportedMediaType):
        parse_codec_name(name)


SHAPE = (1, 8, 4, 4)
DCT = encode_one(_activation(SHAPE), "dct30+ans")


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (rebuild(DCT, layout=None), UnsupportedMediaType, "layout None is not supported"),
        (rebuild(DCT, {"t.step": None}), MalformedPayload, "'t.step' of codec 'dct30\\+ans' is missing"),
        (rebuild(DCT, {"t.counts": torch.ones(4, dtype=torch.uint8)}), MalformedPayload, "unexpected tensors"),
        (rebuild(DCT, {"t.step": torch.zeros(1)}), InvalidTensor, "step must be finite and positive"),
        (rebuild(DCT, {"t.step": torch.full((1,), -1.0)}), InvalidTensor, "step must be finite and positive"),
        (rebuild(DCT, {"t.step": torch.full((1,), float("nan"))}), InvalidTensor, "step must be finite"),
        (rebuild(DCT, {"t.bands": torch.full((1, 4), float("inf"))}), InvalidTensor, "bands must be finite"),
        (rebuild(DCT, {"t.bands": torch.ones(1, 5)}), InvalidTensor, r"needs float32\[1, 4\]"),
        (rebuild(DCT, {"t.spread": torch.ones(1, 9, dtype=torch.uint8)}), InvalidTensor, r"needs uint8\[1, 8\]"),
        (rebuild(DCT, {"t": torch.ones(6, dtype=torch.uint8)}), MalformedPayload, "whole 32-bit words"),
        (rebuild(DCT, {"t": torch.ones(4 * 128 + 32, dtype=torch.uint8)}), PayloadTooLarge, "at most 528"),
        (rebuild(DCT, {"t.step": torch.full((1,), 1e38)}), InvalidTensor, "NaN or infinite"),
        (rebuild(DCT, codec="dct30+zstd"), UnsupportedMediaType, "only defined with the \\+ans stage"),
    ],
)  # fmt: skip
def test_malformed_layouts_get_typed_errors(data: bytes, error: type[SplitInferError], message: str) -> None:
    with pytest.raises(error, match=message):
        decode_one(data, SHAPE)


def test_huge_declared_tensor_is_refused_before_decoding() -> None:
    parts = {"t.step": torch.ones(1), "t.bands": torch.ones(1, 4), "t.spread": torch.zeros(1, 1000, dtype=torch.uint8)}
    assert_huge_declaration_refused(DCT, parts)


def test_a_garbage_stream_decodes_to_the_declared_shape_or_a_typed_error() -> None:
    garbage = torch.frombuffer(bytearray(b"\xff\x00\x13\x77" * 3), dtype=torch.uint8)
    with contextlib.suppress(SplitInferError):
        assert decode_one(rebuild(DCT, {"t": garbage}), SHAPE).shape == SHAPE


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(0, 10_000),
)
def test_mutated_payloads_only_raise_typed_errors(flips: list[tuple[int, int]], cut_at: int) -> None:
    data = bytearray(DCT)
    for position, value in flips:
        data[position % len(data)] = value
    data = data[: max(8, len(data) - cut_at % 64)]
    limits = WireLimits(max_batch=8, max_payload_bytes=8192, max_decoded_bytes=8192)
    with contextlib.suppress(SplitInferError):  # anything else fails the test
        decode_one(bytes(data), SHAPE, limits)
