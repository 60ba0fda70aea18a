"""torch's intra-op thread count, applied in every thread that runs torch, and one OpenMP team per process.

``torch.set_num_threads`` sets OpenMP's team size for the calling thread only (``nthreads`` is a per-thread
OpenMP setting, although ``torch.get_num_threads()`` reports the last value set anywhere). A count set
while the model loads in a worker thread therefore leaves the event loop's thread, the head and tail
executors and the thread pool's decoders at OpenMP's default, every core: a service told to use one
thread ran two, and two services sharing two cores fought for them.

Every thread that runs a parallel region with more than one thread also gets an OpenMP team of its own,
kept while the thread lives. Once a process has more of those threads than the machine has cores, GNU
OpenMP throttles every team's spin-wait (to 100 spins), so each of the model's parallel regions pays a
futex wake-up of its idle threads: on 2 cores resnet18's head took 32 ms instead of 24 ms whenever the
thread that had loaded the model stayed alive beside the one running the heads (bench/openmp_teams.py).
So:

* the threads that run the model (the head and tail executors) take :meth:`TorchThreads.apply`, the
  configured count;
* every other thread that touches torch (the event loop's, which runs cheap tails and decodes small
  replies, and the shared pool's decoders, via :meth:`TorchThreads.wrap`) takes :meth:`TorchThreads.apply_light`:
  one thread, which never starts a team;
* the model is loaded by :func:`load_in_own_thread`, in a thread that ends afterwards and takes its team
  with it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

__all__ = ["TorchThreads", "load_in_own_thread"]

P = ParamSpec("P")
T = TypeVar("T")


class TorchThreads:
    """One intra-op thread count (``None``: torch's default, nothing to apply) for the threads that run the
    model, and one thread for every other thread that runs torch."""

    def __init__(self, count: int | None) -> None:
        self.count = count
        self._applied = threading.local()

    def apply(self) -> None:
        """Set the count in the calling thread (once per thread; later calls cost an attribute lookup)."""
        self._set(self.count)

    def apply_light(self) -> None:
        """One thread in the calling thread, which only does small work: it never starts an OpenMP team."""
        self._set(1)

    def _set(self, count: int | None) -> None:
        if count is None or getattr(self._applied, "count", None) == count:
            return
        import torch

        torch.set_num_threads(count)
        self._applied.count = count

    def wrap(self, fn: Callable[P, T]) -> Callable[P, T]:
        """``fn`` that first applies one thread in whichever thread of a shared pool runs it."""

        def in_light_thread(*args: P.args, **kwargs: P.kwargs) -> T:
            self.apply_light()
            return fn(*args, **kwargs)

        return in_light_thread


async def load_in_own_thread(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` in a thread of its own that ends when it returns (off the event loop)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="load") as pool:
        return await asyncio.get_running_loop().run_in_executor(pool, lambda: fn(*args, **kwargs))
