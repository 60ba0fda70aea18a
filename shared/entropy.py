"""The ``+ans`` entropy stage: quantized symbols coded with rANS (``constriction``'s stack coder).

A tensor's symbols (integers below the alphabet size ``K``, a power of two from 2 to 256) are coded
with one categorical model whose probabilities are symbol frequencies ``f / f.sum()``, computed in
float64 on both sides. The frequencies travel with the stream as one byte each (U8 ``[K]``), a small
float: code ``0`` is frequency 0, code ``c > 0`` is ``(16 + (c - 1) % 16) << ((c - 1) // 16)`` (16 to
2^20, 1/16 relative precision; the sender codes with the frequencies it sends, so both sides agree
bit for bit). The stream is the coder's 32-bit words, little-endian, as a byte string whose length
is a multiple of 4.

Decoding is bounded: it yields exactly the number of symbols the logical shape asks for (never more,
whatever the stream), every symbol below ``K``; a stream longer than :func:`max_stream_bytes` is refused.
"""

from __future__ import annotations

import numpy as np
import torch

from shared.errors import InvalidTensor, MalformedPayload

__all__ = ["MAX_ALPHABET", "ans_decode", "ans_encode", "check_counts", "frequencies", "max_stream_bytes"]

MAX_ALPHABET = 256


def max_stream_bytes(count: int) -> int:
    """The longest stream accepted for ``count`` symbols (32 bits a symbol is past any model's worst case)."""
    return 4 * count + 16


def frequencies(codes: np.ndarray) -> np.ndarray:
    """The frequencies (float64) that one-byte codes stand for."""
    codes = codes.astype(np.int64)
    values = (16 + (codes - 1) % 16) << np.maximum(codes - 1, 0) // 16
    return np.where(codes > 0, values, 0).astype(np.float64)


def _codes(counts: np.ndarray) -> np.ndarray:
    """The one-byte code nearest each count (any positive count gets a positive code)."""
    exponent = np.maximum(np.floor(np.log2(np.maximum(counts, 1))).astype(np.int64) - 4, 0)
    mantissa = np.clip(np.round(counts / (2.0**exponent)).astype(np.int64), 16, 32) - 16
    exponent, mantissa = np.where(mantissa == 16, exponent + 1, exponent), np.where(mantissa == 16, 0, mantissa)
    codes = np.minimum(1 + 16 * exponent + mantissa, 255)
    return np.where(counts > 0, codes, 0).astype(np.uint8)


def _model(codes: np.ndarray) -> object:
    import constriction

    weights = frequencies(codes)
    probabilities = weights / float(weights.sum())
    return constriction.stream.model.Categorical(probabilities, perfect=False)


def ans_encode(symbols: torch.Tensor, alphabet: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Code uint8 ``symbols`` (all below ``alphabet``): ``(stream, frequency codes)``, both 1-D uint8."""
    import constriction

    flat = symbols.reshape(-1).numpy().astype(np.int32)
    counts = np.bincount(flat, minlength=alphabet)
    if counts.size != alphabet:
        raise ValueError(f"symbols exceed the alphabet of {alphabet}")
    codes = _codes(counts)
    if flat.size == 0:
        codes[0] = 1
        return torch.empty(0, dtype=torch.uint8), torch.from_numpy(codes)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(flat, _model(codes))
    words = coder.get_compressed().astype("<u4")
    return torch.from_numpy(words.view(np.uint8).copy()), torch.from_numpy(codes)


def check_counts(counts: torch.Tensor, alphabet: int | None = None) -> int:
    """Validate a received counts table; its alphabet size. Raises typed errors."""
    size = int(counts.numel())
    if counts.dim() != 1 or size < 2 or size > MAX_ALPHABET or size & (size - 1):
        raise InvalidTensor(f"ans frequency table has {size} entries; expected a power of two from 2 to {MAX_ALPHABET}")
    if alphabet is not None and size != alphabet:
        raise InvalidTensor(f"ans frequency table has {size} entries; this codec codes {alphabet} symbols")
    if not bool((counts > 0).any()):
        raise InvalidTensor("ans frequency table is all zeros")
    return size


def ans_decode(stream: torch.Tensor, counts: torch.Tensor, count: int) -> torch.Tensor:
    """Decode exactly ``count`` symbols (uint8) from a received stream, after :func:`check_counts`."""
    import constriction

    size = int(stream.numel())
    if size % 4 or size > max_stream_bytes(count):
        raise MalformedPayload(
            f"ans stream of {size} bytes for {count} symbols (whole 32-bit words, at most {max_stream_bytes(count)})"
        )
    if count == 0:
        return torch.empty(0, dtype=torch.uint8)
    words = stream.numpy().view("<u4").astype(np.uint32)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        symbols = coder.decode(_model(counts.numpy()), count)
    except (ValueError, RuntimeError, AssertionError) as exc:
        raise MalformedPayload(f"ans stream cannot be decoded: {exc}") from exc
    return torch.from_numpy(np.asarray(symbols, dtype=np.uint8))
