"""The wire format of :mod:`shared.wire` with numpy only: encode activations, decode the cloud's logits.

The bytes are the torch encoder's, byte for byte (tests/unit/engines/test_edge_lite_wire.py checks it for
every codec): the same safetensors container (written by ``safetensors.numpy``, the same serializer as
``safetensors.torch``), the same metadata in the same order, and codecs computed with the same float32
operations (``int8``: per-(sample, channel) affine quantization rounding half to even, as ``torch.round``).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import zstandard
from safetensors.numpy import load as st_load

from shared.errors import BadGateway, UnsupportedMediaType
from shared.safetensors_io import save_arrays

__all__ = ["ACTIVATION_CODECS", "decode_logits", "encode_activations", "max_logits_reply_bytes", "to_bfloat16_bits"]

FORMAT = "splitinfer"
PROTOCOL_VERSION = "1"
ACTIVATION_CODECS = ("fp32", "fp16", "bf16", "int8")
_ZSTD_LEVEL = 3
_DTYPE_NAMES = {
    np.dtype(np.float32): "float32",
    np.dtype(np.float16): "float16",
    np.dtype(np.float64): "float64",
    np.dtype(np.uint8): "uint8",
    np.dtype(np.int8): "int8",
    np.dtype(np.int32): "int32",
    np.dtype(np.int64): "int64",
    np.dtype(np.bool_): "bool",
}
_MAX_REPLY_HEADER = 64 * 1024


def _parse_codec(name: str) -> tuple[str, bool]:
    base, zstd = (name.removesuffix("+zstd"), True) if name.endswith("+zstd") else (name, False)
    if base not in ACTIVATION_CODECS:
        options = ", ".join(f"{c}[+zstd]" for c in ACTIVATION_CODECS)
        raise UnsupportedMediaType(f"unknown codec {name!r}; expected one of {options}")
    return base, zstd


def to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """float32 to bfloat16 as ``uint16`` bits, rounding to nearest even like ``Tensor.to(torch.bfloat16)``."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        rounded = np.where(nan, ((bits >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16), rounded)
    return rounded


def _quantize(values: np.ndarray) -> dict[str, np.ndarray]:
    values = values.astype(np.float32, copy=False)
    if values.ndim == 0:
        raise ValueError("int8 needs tensors with a batch dimension")
    keep = 2 if values.ndim >= 3 else 1
    dims = tuple(range(keep, values.ndim))
    low = values.min(axis=dims) if dims else values
    high = values.max(axis=dims) if dims else values
    low = np.minimum(low, np.float32(0.0))
    high = np.maximum(high, np.float32(0.0))
    scale = (high - low) / np.float32(255.0)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    zero_point = np.clip(np.round(-low / scale), 0, 255).astype(np.float32)
    shape = scale.shape + (1,) * len(dims)
    quantized = np.round(values / scale.reshape(shape)) + zero_point.reshape(shape)
    return {
        "": np.clip(quantized, 0, 255).astype(np.uint8),
        ".scale": np.ascontiguousarray(scale),
        ".zero_point": zero_point.astype(np.uint8),
    }


def _components(base: str, tensor: np.ndarray) -> dict[str, np.ndarray]:
    if tensor.dtype.kind != "f":
        return {"": np.ascontiguousarray(tensor)}
    if base == "int8":
        return _quantize(tensor)
    if base == "fp16":
        return {"": np.ascontiguousarray(tensor, dtype=np.float16)}
    if base == "bf16":
        return {"": to_bfloat16_bits(tensor)}
    return {"": np.ascontiguousarray(tensor, dtype=np.float32)}


def encode_activations(
    tensors: Mapping[str, np.ndarray],
    *,
    model: str,
    weights: str,
    cut: str,
    codec: str,
    values: Sequence[Mapping[str, Any]] = (),
    extra: Mapping[str, str] | None = None,
) -> bytes:
    """Named activations (in the order the tail takes them) to wire bytes (kind ``activations``); ``values``
    are the cut's non-tensor values as ``Manifest.values_at`` describes them."""
    base, use_zstd = _parse_codec(codec)
    compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL, write_content_size=True) if use_zstd else None
    stored: dict[str, np.ndarray] = {}
    bf16: set[str] = set()
    described: list[dict[str, Any]] = []
    for name, tensor in tensors.items():
        if tensor.dtype not in _DTYPE_NAMES:
            raise UnsupportedMediaType(f"tensor {name!r} has dtype {tensor.dtype}, which the wire cannot carry")
        described.append({"name": name, "dtype": _DTYPE_NAMES[tensor.dtype], "shape": list(tensor.shape)})
        for suffix, part in _components(base, tensor).items():
            if compressor is not None:
                raw = part.tobytes() if part.size else b""
                part = np.frombuffer(compressor.compress(raw), dtype=np.uint8)
            elif base == "bf16" and tensor.dtype.kind == "f":
                bf16.add(name + suffix)  # numpy has no bfloat16: the bits are uint16
            stored[name + suffix] = part
    metadata = {
        "format": FORMAT,
        "version": PROTOCOL_VERSION,
        "kind": "activations",
        "model": model,
        "weights": weights,
        "cut": cut,
        "codec": codec,
        "tensors": json.dumps(described, separators=(",", ":")),
        **(extra or {}),
    }
    if values:
        metadata["values"] = json.dumps(
            [{"name": v["name"], "kind": v["kind"], "items": list(v["items"])} for v in values], separators=(",", ":")
        )
    return save_arrays(stored, metadata, bf16)


def max_logits_reply_bytes(batch_size: int, num_classes: int) -> int:
    """The most a reply of ``batch_size x num_classes`` logits may take (what :func:`decode_logits` accepts)."""
    return batch_size * num_classes * 4 + _MAX_REPLY_HEADER


def decode_logits(body: bytes, *, model: str, weights: str, cut: str, batch_size: int, num_classes: int) -> np.ndarray:
    """The cloud's reply to a payload sent at ``cut`` (kind ``logits``, codec ``fp32``) as a float32
    ``batch_size x num_classes`` array.

    Everything wrong with it is the cloud's fault: :class:`BadGateway` (502), logits it says it computed at
    another cut included (a confused cloud, or a proxy mixing replies).
    """
    expected_bytes = batch_size * num_classes * 4
    if len(body) < 8 or len(body) > max_logits_reply_bytes(batch_size, num_classes):
        raise BadGateway(f"the cloud's reply is {len(body)} bytes; expected about {expected_bytes}")
    (length,) = struct.unpack("<Q", body[:8])
    if length > _MAX_REPLY_HEADER or 8 + length > len(body):
        raise BadGateway("the cloud's reply has a malformed header")
    try:
        header = json.loads(body[8 : 8 + length])
    except (ValueError, RecursionError) as exc:  # NOTE: UTF-8, JSON and int-digit errors, and deep nesting
        raise BadGateway(f"the cloud's reply header is not JSON: {type(exc).__name__}: {str(exc)[:200]}") from exc
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        raise BadGateway("the cloud's reply has no metadata")
    wanted = {
        "format": FORMAT,
        "version": PROTOCOL_VERSION,
        "kind": "logits",
        "model": model,
        "weights": weights,
        "cut": cut,
    }
    for key, value in wanted.items():
        if metadata.get(key) != value:
            raise BadGateway(f"the cloud's reply has {key} {metadata.get(key)!r}; expected {value!r}")
    entry = header.get("logits")
    if set(header) != {"__metadata__", "logits"} or not isinstance(entry, dict):
        raise BadGateway("the cloud's reply must hold exactly one tensor, 'logits'")
    if entry.get("dtype") != "F32" or entry.get("shape") != [batch_size, num_classes]:
        raise BadGateway(
            f"the cloud's logits are {entry.get('dtype')}{entry.get('shape')}; "
            f"expected F32[{batch_size}, {num_classes}]"
        )
    try:
        logits = st_load(body)["logits"]
    except Exception as exc:  # SafetensorError is not exported under a stable name
        raise BadGateway(f"the cloud's reply is not a valid container: {exc}") from exc
    if not np.isfinite(logits).all():
        raise BadGateway("the cloud's logits contain NaN or infinite values")
    return logits
