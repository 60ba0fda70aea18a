"""The parts of wire payloads that repeat from one request to the next, parsed or written once.

An edge sends every request of a route with the same header: the same model, cut, codec, shapes and
offsets, only the data differs (codecs whose side information varies per payload keep it in tensors, not
in the header). The cloud answers every request of a cut with the same logits header. On the cloud's hot
path (a small payload and a one-layer tail) parsing and bound-checking that header took about 8% of the
event loop's time and writing the reply's another 5-10%. These caches keep the results, bounded in
entries and in the size of what they key on.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import torch

from shared.protocol import encode_logits
from shared.wire import WireHeader, WireLimits, read_header

__all__ = ["HeaderCache", "LogitsWriter"]

_CACHED_HEADER_BYTES = 4096
"""Longer headers are parsed every time (no route of a real model has one: resnet18's are 360-560 bytes)."""


class HeaderCache:
    """:func:`shared.wire.read_header` with the results for the last ``entries`` distinct headers kept.

    The key is the header's bytes and the payload's length (the header's offsets are checked against the
    length), so a payload is accepted from the cache only if parsing it would accept it too. The returned
    ``(metadata, entries)`` are shared between payloads: read them, never change them.
    """

    def __init__(self, limits: WireLimits, entries: int = 64) -> None:
        self.limits = limits
        self._entries = entries
        self._parsed: dict[tuple[bytes, int], WireHeader] = {}

    def __len__(self) -> int:
        return len(self._parsed)

    def read(self, data: bytes) -> WireHeader:
        """The payload's parsed and bound-checked header; raises what :func:`read_header` raises."""
        if 8 <= len(data) <= self.limits.max_payload_bytes:
            (header_len,) = struct.unpack_from("<Q", data)
            if header_len <= min(_CACHED_HEADER_BYTES, self.limits.max_header_bytes, len(data) - 8):
                key = (data[8 : 8 + header_len], len(data))
                header = self._parsed.get(key)
                if header is None:
                    header = read_header(data, self.limits)
                    if len(self._parsed) >= self._entries:
                        self._parsed.clear()  # NOTE: a churn of distinct headers costs only their parsing
                    self._parsed[key] = header
                return header
        return read_header(data, self.limits)


class LogitsWriter:
    """:func:`shared.protocol.encode_logits` for one model, with the container's header written once per cut
    and shape: the same bytes, without rebuilding the JSON header of every reply."""

    def __init__(self, model: str, weights: str, entries: int = 64) -> None:
        self.model, self.weights = model, weights
        self._entries = entries
        self._prefixes: dict[tuple[str, tuple[int, ...]], bytes] = {}

    def write(self, logits: torch.Tensor, cut: str) -> bytes:
        """The logits as a wire payload (kind ``logits``, codec ``fp32``)."""
        values = logits.detach().float().cpu().contiguous()
        key = (cut, tuple(values.shape))
        prefix = self._prefixes.get(key)
        if prefix is None:
            prefix = _container_prefix(encode_logits(values, model=self.model, weights=self.weights, cut=cut))
            if len(self._prefixes) >= self._entries:
                self._prefixes.clear()
            self._prefixes[key] = prefix
        data: np.ndarray = values.numpy()
        return prefix + data.tobytes()


def _container_prefix(payload: bytes) -> bytes:
    """The 8-byte length and the JSON header of a one-tensor safetensors container."""
    (header_len,) = struct.unpack_from("<Q", payload)
    header = json.loads(payload[8 : 8 + header_len])
    if len(header) != 2:  # NOTE: __metadata__ and the logits; anything else would not be a fixed prefix
        raise ValueError(f"a logits payload holds one tensor, not {len(header) - 1}")
    return payload[: 8 + header_len]
