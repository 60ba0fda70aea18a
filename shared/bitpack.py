"""Bit packing of small unsigned integers: ``count`` values of ``bits`` bits each, LSB first.

Value ``i`` occupies bits ``i * bits`` to ``(i + 1) * bits - 1`` of the little-endian bit stream (bit 0
is the least significant bit of byte 0). The stream is ``ceil(count * bits / 8)`` bytes; unused high
bits of the last byte are zero.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["pack_bits", "packed_size", "unpack_bits"]


def packed_size(count: int, bits: int) -> int:
    """Bytes that ``count`` values of ``bits`` bits occupy."""
    return (count * bits + 7) // 8


def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack a uint8 tensor whose values are below ``2**bits`` into a 1-D uint8 tensor."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be 1..8, got {bits}")
    flat = values.reshape(-1).numpy()
    if bits == 8:
        return torch.from_numpy(flat.copy())
    planes = np.unpackbits(flat[:, None], axis=1, count=bits, bitorder="little")
    return torch.from_numpy(np.packbits(planes.reshape(-1), bitorder="little"))


def unpack_bits(data: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The inverse of :func:`pack_bits`: ``count`` uint8 values. ``data`` must be exactly the packed size."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be 1..8, got {bits}")
    raw = data.reshape(-1).numpy()
    if raw.size != packed_size(count, bits):
        raise ValueError(f"{raw.size} packed bytes cannot hold exactly {count} values of {bits} bits")
    if bits == 8:
        return torch.from_numpy(raw.copy())
    stream = np.unpackbits(raw, count=count * bits, bitorder="little").reshape(count, bits)
    return torch.from_numpy(np.packbits(stream, axis=1, bitorder="little").reshape(count))
