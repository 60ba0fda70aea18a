from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from service_core.heap import HeapTrimmer, malloc_trim

_WAIT_S = 10.0


def test_large_requests_trim_the_heap_one_trim_at_a_time_off_the_event_loop() -> None:
    started = [threading.Event() for _ in range(3)]
    release = threading.Event()
    trimmed_in: list[str] = []

    def trim() -> None:
        started[len(trimmed_in)].set()
        trimmed_in.append(threading.current_thread().name)
        release.wait(_WAIT_S)

    async def until(condition: Callable[[], bool]) -> None:
        for _ in range(int(_WAIT_S / 0.01)):
            if condition():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("not in time")

    async def scenario() -> HeapTrimmer:
        trimmer = HeapTrimmer(trim, threshold_pixels=1_000)
        trimmer.released(999)  # NOTE: small requests do not trim
        trimmer.released(1_000)
        await asyncio.to_thread(started[0].wait, _WAIT_S)
        # NOTE: two large requests end while the trim runs: what they freed may be in an arena it has passed,
        # so one more trim follows (one, not two).
        trimmer.released(50_000)
        trimmer.released(50_000)
        assert len(trimmed_in) == 1
        release.set()
        await until(lambda: trimmer.trims == 2)
        await asyncio.sleep(0.1)
        assert trimmer.trims == 2 and len(trimmed_in) == 2
        trimmer.released(2_000)  # NOTE: the next large request trims again
        await until(lambda: trimmer.trims == 3)
        return trimmer

    trimmer = asyncio.run(scenario())
    assert trimmer.trims == 3 and len(trimmed_in) == 3
    assert threading.main_thread().name not in trimmed_in


def test_glibc_s_trim_is_found_here_and_runs() -> None:
    trim = malloc_trim()
    assert trim is not None  # NOTE: the services run on glibc (Debian) here and in the images
    trim()
    assert HeapTrimmer(None).trim is None  # NOTE: elsewhere: nothing to call, nothing happens
