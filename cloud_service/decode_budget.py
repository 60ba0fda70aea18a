"""A bound on the memory that request payloads take once decoded, whatever their size on the wire.

Admission (service_core.admission) bounds the *bodies* in flight, but a compact codec's body of a few KiB
(``int2+ans`` or ``dct50+ans`` of a batch of near-zero activations) decodes to a whole batch of float32
activations, up to the wire limit's ``max_decoded_bytes``, and the decoded tensors then wait for the tail in
the batcher's queue. Each request therefore reserves what its payload declares it decodes to, times the
decoder's measured working set (:func:`decode_cost`), from the moment its header is read until it is
answered; past the budget it gets 503 + Retry-After before anything is decoded. A request alone is always
admitted, so the budget never refuses a payload the wire limits accept.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from shared.errors import ServiceUnavailable
from shared.wire import declared_bytes

__all__ = ["WORKING_SET", "DecodeBudget", "decode_cost"]

WORKING_SET = {"dct": 8, "compact": 3, "cast": 2}
"""Peak memory of decoding a payload, per byte of the activations it decodes to (measured: ``dct50+ans``
7.1, ``int2+ans`` 2.6, ``int8+zstd`` 2.3; bench/results/hostile_decode_memory.md)."""


def decode_cost(metadata: Mapping[str, str], max_decoded_bytes: int) -> int:
    """The bytes a payload with this header ``metadata`` costs to decode and hold. Images (cut ``input``) cost
    nothing here (their decodes are bounded in number and pixels elsewhere); a header that declares more than
    ``max_decoded_bytes`` costs nothing either: decoding refuses it (413) before it allocates."""
    if metadata.get("kind") != "activations":
        return 0
    declared = declared_bytes(metadata)
    if declared > max_decoded_bytes:
        return 0
    codec = metadata.get("codec", "")
    if codec.startswith("dct"):
        return declared * WORKING_SET["dct"]
    if "+" in codec or codec.startswith("int"):
        return declared * WORKING_SET["compact"]
    return declared * WORKING_SET["cast"]


class DecodeBudget:
    """Bytes reserved by the requests being decoded or waiting for the tail (used on the event loop only)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.in_use = 0

    @contextmanager
    def reserve(self, cost: int) -> Iterator[None]:
        """Hold ``cost`` bytes until the block ends; :class:`ServiceUnavailable` (503) when they do not fit
        beside what others hold."""
        if cost and self.in_use and self.in_use + cost > self.max_bytes:
            raise ServiceUnavailable(
                f"payloads being decoded hold {self.in_use} bytes; this one needs {cost} more to decode, past the "
                f"limit of {self.max_bytes} (MAX_DECODED_BYTES_IN_FLIGHT)",
                retry_after=1,
            )
        self.in_use += cost
        try:
            yield
        finally:
            self.in_use -= cost
