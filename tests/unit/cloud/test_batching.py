from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from cloud_service.batching import DynamicBatcher
from shared.errors import ServiceUnavailable


class Recorder:
    """A fake model: doubles its inputs, records each batch, fails on 'bad' values."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[tuple[str, list[int]]] = []
        self.delay_s = delay_s
        self.lock = threading.Lock()

    def __call__(self, key: str, values: Sequence[int]) -> list[int]:
        with self.lock:
            self.batches.append((key, list(values)))
        time.sleep(self.delay_s)
        if -1 in values:
            raise RuntimeError("bad value")
        return [2 * v for v in values]


async def _with_batcher(recorder: Recorder, **options: float) -> DynamicBatcher[int, int]:
    executor = ThreadPoolExecutor(1)
    defaults: dict[str, float] = {"max_batch_size": 8, "max_delay_s": 0.05, "max_queue": 100}
    batcher: DynamicBatcher[int, int] = DynamicBatcher(recorder, executor, **(defaults | options))  # type: ignore[arg-type]
    batcher.start()
    return batcher


def test_concurrent_requests_share_a_batch_and_get_their_own_results() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        batcher = await _with_batcher(recorder)
        results = await asyncio.gather(*(batcher.submit("cut", v) for v in range(8)))
        await batcher.stop()
        assert [r for r, _ in results] == [2 * v for v in range(8)]
        assert recorder.batches == [("cut", list(range(8)))]
        assert {stats.batch_size for _, stats in results} == {8}

    asyncio.run(scenario())


def test_batches_never_exceed_max_size_and_keys_never_mix() -> None:
    async def scenario() -> None:
        recorder = Recorder(delay_s=0.01)
        batcher = await _with_batcher(recorder, max_batch_size=3)
        jobs = [batcher.submit("a" if v % 2 else "b", v) for v in range(10)]
        results = await asyncio.gather(*jobs)
        await batcher.stop()
        assert [r for r, _ in results] == [2 * v for v in range(10)]
        for key, values in recorder.batches:
            assert len(values) <= 3
            assert all(("a" if v % 2 else "b") == key for v in values)

    asyncio.run(scenario())


def test_a_bad_request_does_not_poison_its_batch() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        batcher = await _with_batcher(recorder)
        outcomes = await asyncio.gather(*(batcher.submit("cut", v) for v in (1, -1, 3)), return_exceptions=True)
        await batcher.stop()
        assert outcomes[0][0] == 2 and outcomes[2][0] == 6  # type: ignore[index]
        assert isinstance(outcomes[1], RuntimeError)
        assert recorder.batches[0] == ("cut", [1, -1, 3])  # tried together, then one by one

    asyncio.run(scenario())


def test_full_queue_refuses_with_retry_after() -> None:
    async def scenario() -> None:
        recorder = Recorder(delay_s=0.2)
        batcher = await _with_batcher(recorder, max_batch_size=1, max_queue=2)
        first = asyncio.ensure_future(batcher.submit("cut", 1))
        await asyncio.sleep(0.05)  # the first is running; the next two wait in the queue
        waiting = [asyncio.ensure_future(batcher.submit("cut", v)) for v in (2, 3)]
        await asyncio.sleep(0)
        with pytest.raises(ServiceUnavailable) as refused:
            await batcher.submit("cut", 4)
        assert refused.value.retry_after == 1 and refused.value.status == 503
        assert [r for r, _ in await asyncio.gather(first, *waiting)] == [2, 4, 6]
        await batcher.stop()

    asyncio.run(scenario())


def test_under_load_a_request_waits_for_company_at_most_max_delay() -> None:
    async def scenario() -> None:
        batcher = await _with_batcher(Recorder(), max_batch_size=64, max_delay_s=0.3)
        idle_started = time.perf_counter()
        _, stats = await batcher.submit("cut", 1)
        idle_s = time.perf_counter() - idle_started
        await asyncio.gather(*(batcher.submit("cut", i) for i in range(4)))  # load: the last run held 4
        started = time.perf_counter()
        _, alone = await batcher.submit("cut", 5)
        waited_s = time.perf_counter() - started
        await batcher.stop()
        assert stats.batch_size == 1 and idle_s < 0.25  # no load: a lone request does not wait
        assert alone.batch_size == 1
        assert 0.25 <= waited_s < 2.0  # under load it waits for company, and max_delay bounds the wait

    asyncio.run(scenario())


def test_items_larger_than_a_batch_are_refused() -> None:
    async def scenario() -> None:
        batcher = await _with_batcher(Recorder(), max_batch_size=4)
        with pytest.raises(ValueError, match="exceeds max_batch_size"):
            await batcher.submit("cut", 1, size=5)
        await batcher.stop()

    asyncio.run(scenario())
