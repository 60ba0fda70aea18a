"""One-tensor activation payloads for codec tests: encode, decode, and rebuild with parts or metadata changed."""

from __future__ import annotations

import resource

import pytest
import safetensors.torch
import torch

from shared.errors import PayloadTooLarge
from shared.wire import BATCH, ExpectedTensor, WireLimits, decode_payload, encode_payload, read_header

__all__ = [
    "LIMITS",
    "MODEL",
    "WEIGHTS",
    "assert_huge_declaration_refused",
    "decode_one",
    "encode_one",
    "expected_one",
    "rebuild",
]

MODEL, WEIGHTS = "m", "sha256:abc"
LIMITS = WireLimits.for_batch(64)


def encode_one(tensor: torch.Tensor, codec: str) -> bytes:
    """``tensor`` as the payload's one tensor ``t``, at cut ``c``."""
    return encode_payload({"t": tensor}, kind="activations", model=MODEL, weights=WEIGHTS, cut="c", codec=codec)


def expected_one(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> list[ExpectedTensor]:
    return [ExpectedTensor("t", dtype, (BATCH, *shape[1:]))]


def decode_one(
    data: bytes, shape: tuple[int, ...], limits: WireLimits = LIMITS, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The payload's one tensor, decoded as a receiver expecting ``shape`` would."""
    expected = expected_one(shape, dtype)
    payload = decode_payload(data, kind="activations", model=MODEL, weights=WEIGHTS, expected=expected, limits=limits)
    tensor: torch.Tensor = payload.tensors[0]
    return tensor


def rebuild(data: bytes, parts: dict[str, torch.Tensor | None] | None = None, **meta: str | None) -> bytes:
    """``data`` with stored parts replaced (``None``: removed) and metadata keys set (``None``: removed)."""
    metadata, _ = read_header(data, LIMITS)
    stored = dict(safetensors.torch.load(data))
    for name, tensor in (parts or {}).items():
        if tensor is None:
            stored.pop(name)
        else:
            stored[name] = tensor
    for key, value in meta.items():
        if value is None:
            metadata.pop(key)
        else:
            metadata[key] = value
    return safetensors.torch.save(stored, metadata=metadata)


def assert_huge_declaration_refused(payload: bytes, parts: dict[str, torch.Tensor]) -> None:
    """``payload`` rebuilt with a 4-byte stream (and ``parts``) that declares 10^9 values: refused on the
    declared size, with nothing of that size allocated."""
    data = rebuild(
        payload,
        {"t": torch.ones(4, dtype=torch.uint8), **parts},
        tensors='[{"name":"t","dtype":"float32","shape":[1,1000,1000,1000]}]',
    )
    expected = [ExpectedTensor("t", torch.float32, (BATCH, None, None, None))]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(PayloadTooLarge, match="decodes to"):
        decode_payload(data, kind="activations", model=MODEL, weights=WEIGHTS, expected=expected, limits=LIMITS)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024  # KiB
