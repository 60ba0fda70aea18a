"""A bound on the memory that requests take once decoded, together, whatever their size on the wire.

Admission (service_core.admission) bounds the *bodies* in flight, but a small body can decode to far more:
the cloud's compact codecs and tiny JPEGs decode to whole batches (cloud_service.decode_budget prices
them), and an edge's few-KB PNG of 36 megapixels to 108 MB of RGB (service_core.image_cost). Each request
reserves what its header(s) say it decodes to, before anything is decoded, until it is answered or frees
what it decoded earlier (an edge past its head); past the budget it gets 503 + Retry-After. A request alone
is always admitted, so the budget never refuses what the other limits accept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from shared.errors import ServiceUnavailable

__all__ = ["DecodeBudget"]


class DecodeBudget:
    """Bytes reserved by the requests being decoded or waiting for their answer (used on the event loop only)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.in_use = 0

    @contextmanager
    def reserve(self, cost: int) -> Iterator[Callable[[], None]]:
        """Hold ``cost`` bytes until the block ends, or until the function it yields is called (the decoded
        data freed before the request ends); :class:`ServiceUnavailable` (503) when they do not fit beside
        what others hold."""
        if cost and self.in_use and self.in_use + cost > self.max_bytes:
            raise ServiceUnavailable(
                f"requests being decoded hold {self.in_use} bytes; this one needs {cost} more to decode, past the "
                f"limit of {self.max_bytes} (MAX_DECODED_BYTES_IN_FLIGHT)",
                retry_after=1,
            )
        self.in_use += cost
        held = cost

        def release() -> None:
            nonlocal held
            self.in_use -= held
            held = 0

        try:
            yield release
        finally:
            release()
