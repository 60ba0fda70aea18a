"""Writing safetensors containers from numpy arrays, without torch and without safetensors' Python layer.

``safetensors.torch.save`` spends most of a small payload's time in Python bookkeeping (shared-storage
detection, pointer flattening, ctypes casts): about 55 us for one 4 KB tensor, as much as everything else
the cloud does to answer. The container is simple (an 8-byte little-endian header length, a JSON header
padded with spaces to 8 bytes, then the data), so it is written here directly: both the torch side
(shared.wire) and the torch-free edge (edge_lite) use this one writer, and ``safetensors.load`` reads it.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

__all__ = ["save_arrays"]

# NOTE: safetensors lays the data out by dtype (its enum order, descending), then by name.
_RANK = {"BOOL": 0, "U8": 1, "I8": 2, "I16": 3, "U16": 4, "F16": 5, "BF16": 6, "I32": 7, "U32": 8, "F32": 9}
_RANK |= {"F64": 10, "I64": 11, "U64": 12}
_CODES = {"bool": "BOOL", "uint8": "U8", "int8": "I8", "int16": "I16", "uint16": "U16", "float16": "F16"}
_CODES |= {"int32": "I32", "uint32": "U32", "float32": "F32", "float64": "F64", "int64": "I64", "uint64": "U64"}


def save_arrays(stored: Mapping[str, np.ndarray], metadata: Mapping[str, str], bf16: Collection[str] = ()) -> bytes:
    """A safetensors container of ``stored`` with ``metadata``; the arrays named in ``bf16`` hold bfloat16
    bit patterns (as 16-bit integers: numpy has no bfloat16) and are declared ``BF16``.

    Unlike ``safetensors.save`` (whose header maps are hash maps), the header is written in a fixed order:
    equal inputs give equal bytes.
    """
    entries = []
    for name, array in stored.items():
        code = "BF16" if name in bf16 else _CODES[array.dtype.name]
        entries.append((code, name, array))
    entries.sort(key=lambda e: (-_RANK[e[0]], e[1]))
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    chunks = []
    for code, name, array in entries:
        raw = np.ascontiguousarray(array).tobytes()
        header[name] = {"dtype": code, "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        chunks.append(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)
