"""The compact activation codecs: intB (bit-packed), intB-topP, budgetN and the +ans entropy stage."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.bitpack import pack_bits, packed_size, unpack_bits
from shared.codecs import parse_codec_name
from shared.entropy import ans_decode, ans_encode, frequencies
from shared.errors import (
    InvalidTensor,
    MalformedPayload,
    PayloadTooLarge,
    SplitInferError,
    UnsupportedMediaType,
)
from shared.quantize import row_shape
from shared.wire import BATCH, ExpectedTensor, WireLimits, decode_payload, encode_payload, read_header
from tests.support.payloads import (
    LIMITS,
    MODEL,
    WEIGHTS,
    assert_huge_declaration_refused,
    decode_one,
    encode_one,
    rebuild,
)

PACKED = [f"int{b}" for b in (2, 3, 4, 5, 6)]
STAGED = [f"{c}{s}" for c in (*PACKED, "int8", "int4-top30", "int8-top50") for s in ("", "+zstd", "+ans")]
NEW_CODECS = [*STAGED, "budget10+ans", "budget100+ans"]
SHAPES = [(1, 16), (3, 8, 5), (2, 32, 7, 7), (1, 4, 3, 5, 5)]


def _activation(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator) * torch.rand(
        shape[:2] + (1,) * (len(shape) - 2), generator=generator
    )


def _rows(tensor: torch.Tensor) -> torch.Tensor:
    rows = int(np.prod(row_shape(tuple(tensor.shape))))
    return tensor.reshape(rows, -1)


# ------------------------------------------------------------------ round trips and error bounds


@pytest.mark.parametrize("codec", NEW_CODECS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_roundtrip_keeps_dtype_shape_and_zeros(codec: str, shape: tuple[int, ...]) -> None:
    original = torch.relu(_activation(shape))
    decoded = decode_one(encode_one(original, codec), shape)
    assert decoded.dtype == original.dtype and decoded.shape == original.shape
    assert bool((decoded[original == 0] == 0).all())  # zeros stay exact zeros


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_affine_error_is_within_half_a_step_per_row(bits: int) -> None:
    original = _activation((2, 32, 7, 7))
    rows = _rows(original)
    step = (rows.amax(1).clamp(min=0) - rows.amin(1).clamp(max=0)) / ((1 << bits) - 1)
    for stage in ("", "+zstd", "+ans"):
        decoded = _rows(decode_one(encode_one(original, f"int{bits}{stage}"), tuple(original.shape)))
        assert bool(((decoded - rows).abs() <= step[:, None] / 2 + 1e-5).all())


@pytest.mark.parametrize("base", [*PACKED, "int8", "int4-top30", "int8-top50"])
def test_entropy_stages_are_lossless_on_the_symbols(base: str) -> None:
    original = _activation((2, 16, 6, 6), seed=3)
    shape = tuple(original.shape)
    plain = decode_one(encode_one(original, base), shape)
    assert torch.equal(decode_one(encode_one(original, f"{base}+ans"), shape), plain)
    assert torch.equal(decode_one(encode_one(original, f"{base}+zstd"), shape), plain)


def test_int8_layout_is_unchanged_and_int8_ans_decodes_identically() -> None:
    original = _activation((2, 16, 6, 6))
    data = encode_one(original, "int8")
    _, entries = read_header(data, LIMITS)
    assert entries["t"]["shape"] == (2, 16, 6, 6) and "layout" not in read_header(data, LIMITS)[0]
    assert torch.equal(decode_one(encode_one(original, "int8+ans"), (2, 16, 6, 6)), decode_one(data, (2, 16, 6, 6)))


@pytest.mark.parametrize("keep", [10, 30, 75])
def test_top_k_keeps_at_most_its_share_of_every_row(keep: int) -> None:
    original = _activation((2, 8, 10, 10), seed=1)
    decoded = _rows(decode_one(encode_one(original, f"int8-top{keep}+ans"), (2, 8, 10, 10)))
    kept = (decoded != 0).sum(1)
    assert bool((kept <= int(np.ceil(100 * keep / 100))).all())
    largest = _rows(original).abs().argmax(1)
    assert bool((decoded.gather(1, largest[:, None]) != 0).all())  # the largest magnitude always survives


@pytest.mark.parametrize("permille", [10, 20, 50, 200])
def test_budget_meets_its_error_target_per_sample(permille: int) -> None:
    original = _activation((3, 32, 9, 9), seed=2)
    decoded = decode_one(encode_one(original, f"budget{permille}+ans"), (3, 32, 9, 9))
    error = (decoded - original).flatten(1).norm(dim=1) / original.flatten(1).norm(dim=1)
    assert bool((error <= permille / 1000).all()), error


def test_budget_below_what_256_levels_reach_is_best_effort() -> None:
    original = _activation((3, 32, 9, 9), seed=2)
    budget = decode_one(encode_one(original, "budget1+ans"), (3, 32, 9, 9))
    int8 = decode_one(encode_one(original, "int8"), (3, 32, 9, 9))
    assert (budget - original).norm() <= (int8 - original).norm() * 1.001


def test_budget_spends_fewer_bytes_for_a_looser_target() -> None:
    original = _activation((1, 64, 14, 14), seed=4)
    sizes = [len(encode_one(original, f"budget{n}+ans")) for n in (10, 50, 200)]
    assert sizes[0] > sizes[1] > sizes[2]


def test_fewer_bits_mean_fewer_bytes_and_ans_beats_zstd() -> None:
    original = _activation((1, 112, 14, 14), seed=5)
    packed = [len(encode_one(original, f"int{b}")) for b in (2, 3, 4, 5, 6)]
    assert packed == sorted(packed)
    assert len(encode_one(original, "int4+ans")) < len(encode_one(original, "int4+zstd"))


def test_non_float_tensors_travel_unchanged() -> None:
    mask = torch.tensor([[1, 0, 1]], dtype=torch.int64)
    for codec in ("int3", "int4+ans", "budget20+ans"):
        data = encode_payload({"m": mask}, kind="activations", model=MODEL, weights=WEIGHTS, cut="c", codec=codec)
        payload = decode_payload(
            data, kind="activations", model=MODEL, weights=WEIGHTS,
            expected=[ExpectedTensor("m", torch.int64, (BATCH, 3))], limits=LIMITS,
        )  # fmt: skip
        assert torch.equal(payload.tensors[0], mask)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 8), st.lists(st.integers(0, 255), max_size=300))
def test_bit_packing_round_trips(bits: int, values: list[int]) -> None:
    tensor = torch.tensor([v & ((1 << bits) - 1) for v in values], dtype=torch.uint8)
    packed = pack_bits(tensor, bits)
    assert packed.numel() == packed_size(len(values), bits)
    assert torch.equal(unpack_bits(packed, bits, len(values)), tensor)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([2, 4, 16, 256]), st.lists(st.integers(0, 255), min_size=1, max_size=500))
def test_ans_round_trips_exactly(alphabet: int, values: list[int]) -> None:
    symbols = torch.tensor([v % alphabet for v in values], dtype=torch.uint8)
    stream, codes = ans_encode(symbols, alphabet)
    assert torch.equal(ans_decode(stream, codes, len(values)), symbols)


def test_a_constant_tensor_codes_to_an_empty_stream() -> None:
    stream, codes = ans_encode(torch.zeros(50, dtype=torch.uint8), 4)
    assert stream.numel() == 0 and torch.equal(ans_decode(stream, codes, 50), torch.zeros(50, dtype=torch.uint8))
    decoded = decode_one(encode_one(torch.zeros(SHAPE), "int4+ans"), SHAPE)
    assert torch.equal(decoded, torch.zeros(SHAPE))


def test_frequency_codes_cover_their_range() -> None:
    assert frequencies(np.array([0, 1, 16, 17, 255])).tolist() == [0, 16, 31, 32, (16 + 14) << 15]


# ------------------------------------------------------------------ names and layout versions


@pytest.mark.parametrize(
    ("name", "parsed"),
    [("int4", ("int4", "")), ("int2+ans", ("int2", "ans")), ("int8-top25+zstd", ("int8-top25", "zstd")),
     ("budget20+ans", ("budget20", "ans")), ("fp16+zstd", ("fp16", "zstd"))],
)  # fmt: skip
def test_codec_names(name: str, parsed: tuple[str, str]) -> None:
    assert parse_codec_name(name) == parsed


@pytest.mark.parametrize(
    "name",
    ["int1", "int7", "int9", "int4-top0", "int4-top100", "int7-top5", "budget0", "budget501", "budget20",
     "budget20+zstd", "fp16+ans", "int4+lz4", "int4+", "int04", "jpeg"],
)  # fmt: skip
def test_unknown_or_undefined_codec_names_are_415(name: str) -> None:
    with pytest.raises(UnsupportedMediaType):
        parse_codec_name(name)


SHAPE = (1, 8, 4, 4)
ANS = encode_one(_activation(SHAPE), "int4+ans")
BUDGET = encode_one(_activation(SHAPE), "budget30+ans")
PACKED4 = encode_one(_activation(SHAPE), "int4")


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (rebuild(ANS, layout=None), UnsupportedMediaType, "layout None is not supported"),
        (rebuild(ANS, layout="2"), UnsupportedMediaType, "layout '2' is not supported"),
        (rebuild(PACKED4, layout=None), UnsupportedMediaType, "layout"),
        (rebuild(ANS, {"t.counts": None}), MalformedPayload, "'t.counts' of codec 'int4\\+ans' is missing"),
        (rebuild(ANS, {"t.extra": torch.zeros(1)}), MalformedPayload, "unexpected tensors"),
        (rebuild(ANS, {"t.counts": torch.ones(8, dtype=torch.uint8)}), InvalidTensor, "codes 16 symbols"),
        (rebuild(BUDGET, {"t.counts": torch.ones(12, dtype=torch.uint8)}), InvalidTensor, "power of two"),
        (rebuild(BUDGET, {"t.counts": torch.ones(1, dtype=torch.uint8)}), InvalidTensor, "power of two"),
        (rebuild(ANS, {"t.counts": torch.zeros(16, dtype=torch.uint8)}), InvalidTensor, "all zeros"),
        (rebuild(ANS, {"t.counts": torch.ones(16, dtype=torch.int32)}), InvalidTensor, "needs a 1-D uint8"),
        (rebuild(ANS, {"t.counts": torch.ones(2, 8, dtype=torch.uint8)}), InvalidTensor, "needs a 1-D uint8"),
        (rebuild(ANS, {"t.counts": torch.ones(512, dtype=torch.uint8)}), PayloadTooLarge, "at most 256"),
        (rebuild(ANS, {"t": torch.ones(6, dtype=torch.uint8)}), MalformedPayload, "whole 32-bit words"),
        (rebuild(ANS, {"t": torch.ones(4 * 128 + 32, dtype=torch.uint8)}), PayloadTooLarge, "at most 528"),
        (rebuild(ANS, {"t.zero_point": torch.full((1, 8), 16, dtype=torch.uint8)}), InvalidTensor, "zero points"),
        (rebuild(PACKED4, {"t.zero_point": torch.full((1, 8), 16, dtype=torch.uint8)}), InvalidTensor, "4 bits"),
        (rebuild(PACKED4, {"t": torch.ones(65, dtype=torch.uint8)}), InvalidTensor, r"needs uint8\[64\]"),
        (rebuild(PACKED4, {"t.scale": torch.full((1, 8), float("inf"))}), InvalidTensor, "NaN or infinite"),
        (rebuild(ANS, codec="budget30+zstd"), UnsupportedMediaType, "only defined with the \\+ans stage"),
    ],
)  # fmt: skip
def test_malformed_layouts_get_typed_errors(data: bytes, error: type[SplitInferError], message: str) -> None:
    with pytest.raises(error, match=message):
        decode_one(data, SHAPE)


def test_huge_declared_tensor_is_refused_before_decoding() -> None:
    """A 4-byte stream that declares 10^9 values: refused on the declared size, nothing allocated."""
    parts = {"t.scale": torch.ones(1, 10**3), "t.zero_point": torch.zeros(1, 10**3, dtype=torch.uint8)}
    assert_huge_declaration_refused(ANS, parts)


def test_garbage_stream_decodes_to_exactly_the_declared_count() -> None:
    stream = torch.frombuffer(bytearray(b"\xff\x00\x13\x77" * 3), dtype=torch.uint8)
    codes = torch.tensor([200, 1, 1, 1], dtype=torch.uint8)
    symbols = ans_decode(stream, codes, 1000)
    assert symbols.numel() == 1000 and int(symbols.max()) < 4


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([ANS, BUDGET, PACKED4, encode_one(_activation(SHAPE), "int3-top50+ans")]),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(0, 10_000),
)
def test_mutated_payloads_only_raise_typed_errors(base: bytes, flips: list[tuple[int, int]], cut_at: int) -> None:
    data = bytearray(base)
    for position, value in flips:
        data[position % len(data)] = value
    data = data[: max(8, len(data) - cut_at % 64)]
    limits = WireLimits(max_batch=8, max_payload_bytes=8192, max_decoded_bytes=8192)
    with contextlib.suppress(SplitInferError):  # anything else fails the test
        decode_one(bytes(data), SHAPE, limits)


def test_budget_with_a_row_of_only_negative_values_decodes() -> None:
    """The alphabet covers every zero point: an all-negative row's zero point is above its largest q."""
    original = -1 - torch.rand(1, 4, 1, 1, generator=torch.Generator().manual_seed(0))
    decoded = decode_one(encode_one(original, "budget20+ans"), (1, 4, 1, 1))
    assert float((decoded - original).norm() / original.norm()) <= 0.02
