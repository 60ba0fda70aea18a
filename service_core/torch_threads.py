"""torch's intra-op thread count, applied in every thread that runs torch.

``torch.set_num_threads`` sets OpenMP's team size for the calling thread only (``nthreads`` is a per-thread
OpenMP setting, although ``torch.get_num_threads()`` reports the last value set anywhere). A count set
while the model loads in a worker thread therefore leaves the event loop's thread, the head and tail
executors and the thread pool's decoders at OpenMP's default, every core: a service told to use one
thread ran two, and two services sharing two cores fought for them. :class:`TorchThreads` applies the
count once in each thread that runs torch: executors take :meth:`TorchThreads.apply` as their
initializer, the lifespan calls it on the loop's thread, and work handed to a shared pool is wrapped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["TorchThreads"]

P = ParamSpec("P")
T = TypeVar("T")


class TorchThreads:
    """One intra-op thread count (``None``: torch's default, nothing to apply) for every thread that runs torch."""

    def __init__(self, count: int | None) -> None:
        self.count = count
        self._applied = threading.local()

    def apply(self) -> None:
        """Set the count in the calling thread (once per thread; later calls cost an attribute lookup)."""
        if self.count is None or getattr(self._applied, "done", False):
            return
        import torch

        torch.set_num_threads(self.count)
        self._applied.done = True

    def wrap(self, fn: Callable[P, T]) -> Callable[P, T]:
        """``fn`` that first applies the count in whichever thread runs it (for shared thread pools)."""

        def in_counted_thread(*args: P.args, **kwargs: P.kwargs) -> T:
            self.apply()
            return fn(*args, **kwargs)

        return in_counted_thread
