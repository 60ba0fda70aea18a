"""Tensor codecs: how one logical tensor becomes the component tensors stored in the wire container.

A codec name is a base codec optionally followed by a stage: ``+zstd`` (a lossless zstd frame per
component) or ``+ans`` (the quantized symbols entropy-coded with rANS, see :mod:`shared.entropy`).

Base codecs (layout version 1 for every codec added after the first release, see ``LAYOUT_VERSION``):

* ``fp32`` (lossless for fp32 activations), ``fp16``, ``bf16``: a cast; decoding casts back.
* ``int8``: per-row affine 8-bit quantization (:mod:`shared.quantize`: a row is a (sample, channel)
  pair for rank >= 3, a sample for rank <= 2), ``q`` stored as U8 in the tensor's shape.
* ``int2`` .. ``int6``: the same with 2-6 bits, ``q`` bit-packed LSB first (:mod:`shared.bitpack`).
* ``intB-topP`` (B in 2-6 or 8, P in 1-99): top-K sparsification: each row keeps its P % largest
  magnitudes, the rest become exact zeros, then ``intB``. The index set is not sent separately: a
  dropped value is the zero symbol, which the entropy stage (``+ans``, or ``+zstd``) codes in about
  ``-log2 p(0)`` bits, i.e. the index set costs its entropy.
* ``budgetN`` (N in 1-500, ``+ans`` only): the sender picks each row's step so that every sample's
  relative L2 error is within N per mille, and the alphabet (a power of two up to 256) that covers it.
* ``dctN`` (N in 1-500, ``+ans`` only): spatial transform coding within an error budget of N per
  mille: a 2-D DCT of every channel map, one step per sample, and rANS under a Laplace model per
  frequency band and channel; components ``T``, ``T.step``, ``T.bands``, ``T.spread`` (see
  :mod:`shared.dct_codec`).

Tensors that are not floating point (masks, indices) are stored unchanged by every base codec.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from shared.bitpack import pack_bits, packed_size, unpack_bits
from shared.dct_codec import dct_components, dct_decode, dct_encode
from shared.entropy import MAX_ALPHABET, ans_decode, ans_encode, check_counts, max_stream_bytes
from shared.errors import InvalidTensor, UnsupportedMediaType
from shared.quantize import dequantize, quantize_affine, quantize_budget, row_shape, top_k_rows

__all__ = [
    "COMPACT_CODECS",
    "ACTIVATION_CODECS",
    "IMAGE_CODECS",
    "LAYOUT_VERSION",
    "ComponentSpec",
    "TensorCodec",
    "is_layout_versioned",
    "parse_codec_name",
]

ComponentSpec = tuple[torch.dtype, tuple[int | None, ...]]
"""A component's dtype and shape; ``None`` marks a length only the sender knows (1-D, bounded)."""

_CASTS: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ACTIVATION_CODECS = ("fp32", "fp16", "bf16", "int8")
"""The fixed activation codec names; ``intB``, ``intB-topP`` and ``budgetN`` are parametric (see above)."""
IMAGE_CODECS = ("image", "png", "jpeg", "uint8")
COMPACT_CODECS = (
    "int4",
    "int4+ans",
    "int6+ans",
    "int5-top50+ans",
    "budget10+ans",
    "budget20+ans",
    "budget50+ans",
    "dct20+ans",
    "dct50+ans",
)
"""A spread of the parametric activation codecs (below) that reports and the demo page offer."""
STAGES = ("zstd", "ans")
LAYOUT_VERSION = "1"
"""The component layout of the codecs below; sent as the ``layout`` metadata key with each of them."""

_INT = re.compile(r"^int([2-6])$")
_TOP = re.compile(r"^int([2-68])-top([1-9][0-9]?)$")
_BUDGET = re.compile(r"^(budget|dct)([1-9][0-9]{0,2})$")


@dataclass(frozen=True)
class _Quant:
    bits: int  # 8 for budget (its alphabet is chosen per payload)
    keep_percent: int | None = None
    budget_permille: int | None = None
    dct: bool = False


def _parse_quant(base: str) -> _Quant | None:
    if base == "int8":
        return _Quant(8)
    if match := _INT.match(base):
        return _Quant(int(match.group(1)))
    if match := _TOP.match(base):
        return _Quant(int(match.group(1)), keep_percent=int(match.group(2)))
    if (match := _BUDGET.match(base)) and int(match.group(2)) <= 500:
        return _Quant(8, budget_permille=int(match.group(2)), dct=match.group(1) == "dct")
    return None


def is_layout_versioned(base: str) -> bool:
    """Whether ``base`` is one of the codecs whose payloads carry ``layout`` (everything but the first four)."""
    return base not in ACTIVATION_CODECS and _parse_quant(base) is not None


def parse_codec_name(name: str, allowed: tuple[str, ...] = ACTIVATION_CODECS) -> tuple[str, str]:
    """``'int4+ans'`` to ``('int4', 'ans')``, ``'fp16'`` to ``('fp16', '')``.

    ``allowed`` lists the fixed base names; when it includes the activation codecs, the parametric
    quantized ones are allowed too. Raises :class:`UnsupportedMediaType` for unknown names.
    """
    base, plus, stage = name.partition("+")
    activations = any(c in allowed for c in ACTIVATION_CODECS)
    quant = _parse_quant(base) if activations else None
    known = base in allowed or quant is not None
    if not known or (plus and stage not in STAGES):
        options = ", ".join(f"{c}[+zstd]" for c in allowed)
        extra = "; or intB (B=2..6), intB-topP with [+zstd|+ans], budgetN+ans, dctN+ans" if activations else ""
        hint = ""
        if " " in name:  # NOTE: an unencoded '+' in a URL query string arrives as a space
            hint = f" (a '+' in a URL query string means a space: write codec={name.replace(' ', '%2B')})"
        raise UnsupportedMediaType(f"unknown codec {name!r}{hint}; expected one of {options}{extra}")
    if stage == "ans" and quant is None:
        raise UnsupportedMediaType(f"codec {name!r}: +ans codes quantized symbols; use it with intB or budgetN")
    if quant is not None and quant.budget_permille is not None and stage != "ans":
        raise UnsupportedMediaType(f"codec {name!r}: {base} is only defined with the +ans stage ({base}+ans)")
    return base, stage


@dataclass(frozen=True)
class TensorCodec:
    """A base codec (and whether the ``+ans`` stage codes its symbols) for activations."""

    name: str
    ans: bool = False

    @property
    def _quant(self) -> _Quant | None:
        return _parse_quant(self.name)

    def components(self, dtype: torch.dtype, shape: tuple[int, ...]) -> dict[str, ComponentSpec]:
        """The components (suffix -> dtype, shape) that encode a tensor of ``dtype`` and ``shape``."""
        if not dtype.is_floating_point:
            return {"": (dtype, shape)}
        quant = self._quant
        if quant is None:
            return {"": (_CASTS[self.name], shape)}
        if quant.dct:
            return dct_components(shape)
        params = row_shape(shape)
        parts: dict[str, ComponentSpec] = {".scale": (torch.float32, params), ".zero_point": (torch.uint8, params)}
        if self.ans:
            return {"": (torch.uint8, (None,)), **parts, ".counts": (torch.uint8, (None,))}
        numel = _numel(shape)
        data_shape: tuple[int, ...] = shape if quant.bits == 8 else (packed_size(numel, quant.bits),)
        return {"": (torch.uint8, data_shape), **parts}

    def max_component_bytes(self, suffix: str, shape: tuple[int, ...]) -> int:
        """The most bytes a variable-length component of a tensor of ``shape`` may hold."""
        if suffix == ".counts":
            return MAX_ALPHABET
        return max_stream_bytes(_numel(shape))

    def encode(self, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        if not tensor.dtype.is_floating_point:
            return {"": tensor.contiguous()}
        quant = self._quant
        if quant is None:
            return {"": tensor.to(_CASTS[self.name]).contiguous()}
        values = tensor.detach().float()
        if quant.dct and quant.budget_permille is not None:
            return dct_encode(values, quant.budget_permille / 1000)
        if quant.budget_permille is not None:
            q, scale, zero_point = quantize_budget(values, quant.budget_permille / 1000)
        else:
            if quant.keep_percent is not None:
                values = top_k_rows(values, quant.keep_percent)
            q, scale, zero_point = quantize_affine(values, quant.bits)
        parts = {".scale": scale, ".zero_point": zero_point}
        if self.ans:
            alphabet = 1 << quant.bits
            if quant.budget_permille is not None:
                # NOTE: a row of only negative values has its zero point above its largest q
                top = max(int(q.max()), int(zero_point.max())) + 1 if q.numel() else 2
                alphabet = max(2, 1 << (top - 1).bit_length())
            stream, counts = ans_encode(_symbols(q, zero_point, alphabet), alphabet)
            return {"": stream, **parts, ".counts": counts}
        data = q.contiguous() if quant.bits == 8 else pack_bits(q, quant.bits)
        return {"": data, **parts}

    def decode(self, parts: Mapping[str, torch.Tensor], dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        """Rebuild a tensor from received components (their dtypes and fixed shapes already checked)."""
        data = parts[""]
        if not dtype.is_floating_point:
            return data
        quant = self._quant
        if quant is None:
            return data.to(dtype)
        if quant.dct:
            return dct_decode(parts, shape).to(dtype)
        scale, zero_point = parts[".scale"], parts[".zero_point"]
        numel = _numel(shape)
        if self.ans:
            alphabet = check_counts(parts[".counts"], None if quant.budget_permille is not None else 1 << quant.bits)
            if zero_point.numel() and int(zero_point.max()) >= alphabet:
                raise InvalidTensor(f"zero points reach {int(zero_point.max())}; the alphabet has {alphabet} symbols")
            symbols = ans_decode(data, parts[".counts"], numel).reshape(shape)
            q = _from_symbols(symbols, zero_point, alphabet)
        else:
            levels = (1 << quant.bits) - 1
            if zero_point.numel() and int(zero_point.max()) > levels:
                raise InvalidTensor(f"zero points reach {int(zero_point.max())}; {quant.bits} bits hold {levels}")
            q = data if quant.bits == 8 else unpack_bits(data, quant.bits, numel).reshape(shape)
        return dequantize(q, scale, zero_point).to(dtype)


def _broadcast(zero_point: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return zero_point.to(torch.int32).reshape(tuple(zero_point.shape) + (1,) * (q.dim() - zero_point.dim()))


def _symbols(q: torch.Tensor, zero_point: torch.Tensor, alphabet: int) -> torch.Tensor:
    """``(q - zero_point) mod alphabet``: values near zero become small (or near-``alphabet``) symbols."""
    return ((q.to(torch.int32) - _broadcast(zero_point, q)) & (alphabet - 1)).to(torch.uint8)


def _from_symbols(symbols: torch.Tensor, zero_point: torch.Tensor, alphabet: int) -> torch.Tensor:
    return ((symbols.to(torch.int32) + _broadcast(zero_point, symbols)) & (alphabet - 1)).to(torch.uint8)


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for d in shape:
        count *= d
    return count
