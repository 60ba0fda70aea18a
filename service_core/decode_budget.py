"""A bound on the memory that requests take once decoded, together, whatever their size on the wire.

Admission (service_core.admission) bounds the *bodies* in flight, but a small body can decode to far more:
the cloud's compact codecs and tiny JPEGs decode to whole batches (cloud_service.decode_budget prices
them), and an edge's few-KB PNG of 36 megapixels to 108 MB of RGB (service_core.image_cost). Each request
reserves what its header(s) say it decodes to, before anything is decoded, until it is answered or frees
what it decoded earlier (an edge past its head); past the budget it gets 503 + Retry-After. A request alone
is always admitted, so the budget never refuses what the other limits accept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from typing import Any

from shared.errors import ServiceUnavailable

__all__ = ["DecodeBudget", "Reservation"]


class Reservation:
    """Bytes one request holds in a :class:`DecodeBudget`: released when the request's block ends, when it is
    called (the decoded data freed earlier), or, once handed to the work still decoding, when that ends."""

    def __init__(self, budget: DecodeBudget, cost: int) -> None:
        self._budget, self._held = budget, cost
        self.handed_over = False

    def __call__(self) -> None:
        self._budget.in_use -= self._held
        self._held = 0

    def hold_until_done(self, work: Future[Any]) -> None:
        """Keep the bytes until ``work`` (a thread still decoding after its request gave up on it: a deadline,
        a client gone) has ended, not when the request's block ends. Call on the event loop."""
        self.handed_over = True
        loop = asyncio.get_running_loop()

        def ended(_: Future[Any]) -> None:
            with suppress(RuntimeError):  # NOTE: the loop is closed (shutdown): no budget is left to return to
                loop.call_soon_threadsafe(self)

        work.add_done_callback(ended)


class DecodeBudget:
    """Bytes reserved by the requests being decoded or waiting for their answer (used on the event loop only)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.in_use = 0

    @contextmanager
    def reserve(self, cost: int) -> Iterator[Reservation]:
        """Hold ``cost`` bytes until the block ends, or until the :class:`Reservation` it yields is called (the
        decoded data freed before the request ends) or the work it was handed to ends;
        :class:`ServiceUnavailable` (503) when they do not fit beside what others hold."""
        if cost and self.in_use and self.in_use + cost > self.max_bytes:
            raise ServiceUnavailable(
                f"requests being decoded hold {self.in_use} bytes; this one needs {cost} more to decode, past the "
                f"limit of {self.max_bytes} (MAX_DECODED_BYTES_IN_FLIGHT)",
                retry_after=1,
            )
        self.in_use += cost
        reservation = Reservation(self, cost)
        try:
            yield reservation
        finally:
            if not reservation.handed_over:
                reservation()
