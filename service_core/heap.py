"""Memory freed after a request that decoded a large image goes back to the operating system.

glibc's allocator keeps what a thread freed in that thread's arena, and after a large block has been
freed once it serves blocks up to that size from the arenas instead of mapping them. A burst of
36-megapixel images left an edge at 2.2 GB of resident memory for good (bounded by the admission limits,
but never given back). After a request whose images had at least :data:`LARGE_DECODE_PIXELS` pixels,
:class:`HeapTrimmer` calls glibc's ``malloc_trim(0)`` in a worker thread (one at a time), which returns
the free pages of every arena. Elsewhere (musl, macOS) it does nothing. The edge uses it after its
requests; the cloud after decoding the images of a cut ``input`` payload (activations never trigger it).
An image that fails partway through decoding counts as well: Pillow allocated its buffer from its header
before the data ran out (:class:`shared.images.UndecodableImage` carries the pixels).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

__all__ = ["LARGE_DECODE_PIXELS", "HeapTrimmer", "malloc_trim"]

logger = logging.getLogger(__name__)

LARGE_DECODE_PIXELS = 4_000_000
"""A request whose decoded images have at least this many pixels together (16 MB as RGBA) is followed by a trim."""


def malloc_trim() -> Callable[[], None] | None:
    """glibc's ``malloc_trim(0)``, or ``None`` where the C library has none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = [ctypes.c_size_t], ctypes.c_int

    def trim() -> None:
        function(0)

    return trim


class HeapTrimmer:
    """Trims the heap after large requests (see the module docstring). Used from the event loop."""

    def __init__(self, trim: Callable[[], None] | None, threshold_pixels: int = LARGE_DECODE_PIXELS) -> None:
        self.trim, self.threshold_pixels = trim, threshold_pixels
        self.trims = 0
        self._pending: asyncio.Future[None] | None = None
        self._again = False
        """A large request ended while a trim ran: what it freed may be in an arena that trim had passed."""

    def released(self, pixels: int) -> None:
        """A request that decoded ``pixels`` has ended (its images freed): trim if they were many. One trim
        runs at a time; a large request that ends meanwhile gets one more trim after it."""
        if self.trim is None or pixels < self.threshold_pixels:
            return
        if self._pending is not None:
            self._again = True
            return
        self._start()

    def _start(self) -> None:
        if self.trim is None:  # NOTE: released() never starts one then
            return
        self._pending = asyncio.get_running_loop().run_in_executor(None, self.trim)
        self._pending.add_done_callback(self._done)

    def _done(self, future: asyncio.Future[None]) -> None:
        self._pending = None
        self.trims += 1
        if not future.cancelled() and (error := future.exception()) is not None:
            logger.warning("malloc_trim failed: %s", error)
        if self._again:
            self._again = False
            self._start()
