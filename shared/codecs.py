"""Tensor codecs: how one logical tensor becomes the component tensors stored in the wire container.

A codec name is a base codec optionally followed by ``+zstd``, a lossless entropy stage applied to each
component's bytes (``int8+zstd``). Base codecs:

* ``fp32`` (lossless for fp32 activations), ``fp16``, ``bf16``: a cast; decoding casts back.
* ``int8``: per-channel affine 8-bit quantization. The channel axis is 1 for tensors of rank >= 3
  (NCHW channels, NLC tokens) and each (sample, channel) pair gets its own ``scale`` and
  ``zero_point``; tensors of rank <= 2 get one pair per sample. The range always includes 0 so
  post-ReLU zeros stay exact zeros (``q = 0``, which the entropy stage compresses well).

Tensors that are not floating point (masks, indices) are stored unchanged by every base codec.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from shared.errors import UnsupportedMediaType

__all__ = [
    "ACTIVATION_CODECS",
    "IMAGE_CODECS",
    "ComponentSpec",
    "TensorCodec",
    "get_codec",
    "parse_codec_name",
]

ComponentSpec = tuple[torch.dtype, tuple[int, ...]]

_CASTS: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ACTIVATION_CODECS = ("fp32", "fp16", "bf16", "int8")
IMAGE_CODECS = ("image", "png", "jpeg", "uint8")
ZSTD_SUFFIX = "+zstd"


def parse_codec_name(name: str, allowed: tuple[str, ...] = ACTIVATION_CODECS) -> tuple[str, bool]:
    """``'int8+zstd'`` to ``('int8', True)``; raises :class:`UnsupportedMediaType` for unknown names."""
    base, zstd = (name[: -len(ZSTD_SUFFIX)], True) if name.endswith(ZSTD_SUFFIX) else (name, False)
    if base not in allowed:
        options = ", ".join(f"{c}[{ZSTD_SUFFIX}]" for c in allowed)
        hint = ""
        if " " in name:  # NOTE: an unencoded '+' in a URL query string arrives as a space
            hint = f" (a '+' in a URL query string means a space: write codec={name.replace(' ', '%2B')})"
        raise UnsupportedMediaType(f"unknown codec {name!r}{hint}; expected one of {options}")
    return base, zstd


@dataclass(frozen=True)
class TensorCodec:
    """A base codec for activations (``fp32``, ``fp16``, ``bf16`` or ``int8``)."""

    name: str

    def components(self, dtype: torch.dtype, shape: tuple[int, ...]) -> dict[str, ComponentSpec]:
        """The components (suffix -> dtype, shape) that encode a tensor of ``dtype`` and ``shape``."""
        if not dtype.is_floating_point:
            return {"": (dtype, shape)}
        if self.name == "int8":
            axes = shape[:2] if len(shape) >= 3 else shape[:1]
            return {"": (torch.uint8, shape), ".scale": (torch.float32, axes), ".zero_point": (torch.uint8, axes)}
        return {"": (_CASTS[self.name], shape)}

    def encode(self, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        if not tensor.dtype.is_floating_point:
            return {"": tensor.contiguous()}
        if self.name == "int8":
            return _quantize(tensor)
        return {"": tensor.to(_CASTS[self.name]).contiguous()}

    def decode(self, parts: Mapping[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        data = parts[""]
        if not dtype.is_floating_point:
            return data
        if self.name == "int8":
            return _dequantize(data, parts[".scale"], parts[".zero_point"]).to(dtype)
        return data.to(dtype)


def get_codec(base: str) -> TensorCodec:
    if base not in ACTIVATION_CODECS:
        raise UnsupportedMediaType(f"unknown activation codec {base!r}")
    return TensorCodec(base)


def _reduce_dims(tensor: torch.Tensor) -> tuple[int, ...]:
    keep = 2 if tensor.dim() >= 3 else 1
    return tuple(range(keep, tensor.dim()))


def _quantize(tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    values = tensor.detach().float()
    dims = _reduce_dims(values)
    if values.dim() == 0:
        raise ValueError("int8 needs tensors with a batch dimension")
    low = values.amin(dim=dims) if dims else values
    high = values.amax(dim=dims) if dims else values
    low = torch.clamp(low, max=0.0)
    high = torch.clamp(high, min=0.0)
    scale = (high - low) / 255.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero_point = torch.clamp(torch.round(-low / scale), 0, 255)
    shape = scale.shape + (1,) * len(dims)
    quantized = torch.round(values / scale.reshape(shape)) + zero_point.reshape(shape)
    return {
        "": torch.clamp(quantized, 0, 255).to(torch.uint8).contiguous(),
        ".scale": scale.contiguous(),
        ".zero_point": zero_point.to(torch.uint8).contiguous(),
    }


def _dequantize(data: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    extra = data.dim() - scale.dim()
    shape = scale.shape + (1,) * extra
    return (data.float() - zero_point.float().reshape(shape)) * scale.reshape(shape)
