"""Dynamic batching (Triton-style): requests for the same key are run together.

A batch closes when it holds ``max_batch_size`` items or when its oldest request has waited
``max_delay_s``. The wait only happens under load (when the previous run held more than one
item): a lone request never waits, and under load requests also pile up while the model is busy.
Model runs are serialized on one executor thread. If a batched run fails, its requests are retried
one by one, so one bad request never fails its neighbours. The queue is bounded: a full
queue refuses new requests with 503 and ``Retry-After`` instead of growing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from shared.errors import ServiceUnavailable

__all__ = ["BatchStats", "Call", "DynamicBatcher", "run_calls"]

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass(frozen=True)
class BatchStats:
    batch_size: int
    """Items (images) in the model run this request was part of."""
    queue_ms: float
    compute_ms: float


@dataclass(frozen=True)
class Call(Generic[In]):
    """One request waiting in a batch: its key (the cut), value, size (images) and arrival time."""

    key: str
    value: In
    size: int
    enqueued: float


async def run_calls(
    run: Callable[[str, Sequence[In]], Sequence[Out]], executor: Executor, calls: Sequence[Call[In]]
) -> list[tuple[Out, BatchStats] | Exception]:
    """One model run per key among ``calls``. A failing run is retried call by call, so one bad request
    fails alone. Returns a result or an exception per call, in order."""
    results: list[tuple[Out, BatchStats] | Exception] = [RuntimeError("not run")] * len(calls)
    for key in dict.fromkeys(call.key for call in calls):
        indices = [i for i, call in enumerate(calls) if call.key == key]
        for i, result in zip(indices, await _run_group(run, executor, [calls[i] for i in indices]), strict=True):
            results[i] = result
    return results


async def _run_group(
    run: Callable[[str, Sequence[In]], Sequence[Out]], executor: Executor, calls: Sequence[Call[In]]
) -> list[tuple[Out, BatchStats] | Exception]:
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    try:
        outputs = await loop.run_in_executor(executor, run, calls[0].key, [call.value for call in calls])
        if len(outputs) != len(calls):
            raise RuntimeError(f"batched run returned {len(outputs)} outputs for {len(calls)} requests")
    except Exception as exc:
        if len(calls) == 1:
            return [exc]
        # NOTE: find the culprit: each request runs alone, so only the failing ones fail.
        return [(await _run_group(run, executor, [call]))[0] for call in calls]
    compute_ms = (time.perf_counter() - started) * 1000
    size = sum(call.size for call in calls)
    return [
        (output, BatchStats(size, (started - call.enqueued) * 1000, compute_ms))
        for call, output in zip(calls, outputs, strict=True)
    ]


@dataclass
class _Item(Generic[In, Out]):
    key: str
    value: In
    size: int
    future: asyncio.Future[tuple[Out, BatchStats]]
    enqueued: float = field(default_factory=time.perf_counter)


class DynamicBatcher(Generic[In, Out]):
    """Groups submitted items by key and runs ``run(key, values) -> outputs`` on ``executor``.

    ``run`` must return exactly one output per value, in order.
    """

    def __init__(
        self,
        run: Callable[[str, Sequence[In]], Sequence[Out]],
        executor: Executor,
        *,
        max_batch_size: int,
        max_delay_s: float,
        max_queue: int,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_delay_s < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1 and max_delay_s >= 0")
        self._run = run
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._pending: deque[_Item[In, Out]] = deque()
        self._queued: dict[str, int] = {}  # images waiting per key (cancelled ones until the next take)
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_batch = 1

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="dynamic-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(ServiceUnavailable("the service is shutting down"))
        self._pending.clear()
        self._queued.clear()

    async def submit(self, key: str, value: In, size: int = 1) -> tuple[Out, BatchStats]:
        if size > self.max_batch_size:
            raise ValueError(f"an item of {size} exceeds max_batch_size {self.max_batch_size}")
        if len(self._pending) >= self.max_queue:
            raise ServiceUnavailable(f"the batch queue is full ({self.max_queue} requests)", retry_after=1)
        item: _Item[In, Out] = _Item(key, value, size, asyncio.get_running_loop().create_future())
        self._pending.append(item)
        queued = self._queued[key] = self._queued.get(key, 0) + size
        # NOTE: wake the loop only when it has something to do: a first request, or a full batch. Every
        # other arrival waits for the batch's deadline, which the loop's own timer keeps.
        if len(self._pending) == 1 or queued >= self.max_batch_size:
            self._wakeup.set()
        return await item.future

    def _ready_size(self, key: str) -> int:
        return self._queued.get(key, 0)

    async def _loop(self) -> None:
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            first = self._pending[0]
            if first.future.done():  # cancelled by its client
                self._pending.popleft()
                self._queued[first.key] -= first.size
                continue
            # NOTE: waiting for company only pays when there is load; a lone request goes straight through.
            deadline = first.enqueued + (self.max_delay_s if self._last_batch > 1 else 0.0)
            while self._ready_size(first.key) < self.max_batch_size:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                timer = asyncio.get_running_loop().call_later(remaining, self._wakeup.set)
                try:
                    await self._wakeup.wait()
                finally:
                    timer.cancel()
            await self._execute(self._take(first.key))

    def _take(self, key: str) -> list[_Item[In, Out]]:
        batch: list[_Item[In, Out]] = []
        total = 0
        keep: deque[_Item[In, Out]] = deque()
        for item in self._pending:
            if item.future.done():
                continue
            if item.key == key and total + item.size <= self.max_batch_size:
                batch.append(item)
                total += item.size
            else:
                keep.append(item)
        self._pending = keep
        self._queued = {}
        for item in keep:
            self._queued[item.key] = self._queued.get(item.key, 0) + item.size
        return batch

    async def _execute(self, batch: list[_Item[In, Out]]) -> None:
        if not batch:
            return
        self._last_batch = sum(i.size for i in batch)
        calls = [Call(item.key, item.value, item.size, item.enqueued) for item in batch]
        for item, result in zip(batch, await run_calls(self._run, self._executor, calls), strict=True):
            if isinstance(result, Exception):
                _settle(item, exc=result)
            else:
                _settle(item, result=result)


def _settle(
    item: _Item[In, Out], *, result: tuple[Out, BatchStats] | None = None, exc: Exception | None = None
) -> None:
    if item.future.done():
        return
    if exc is not None:
        item.future.set_exception(exc)
    elif result is not None:
        item.future.set_result(result)
