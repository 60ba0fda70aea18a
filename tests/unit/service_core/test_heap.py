from __future__ import annotations

import asyncio
import threading

from service_core.heap import HeapTrimmer, malloc_trim


def test_large_requests_trim_the_heap_once_at_a_time_off_the_event_loop() -> None:
    release = threading.Event()
    trimmed_in: list[str] = []

    def trim() -> None:
        trimmed_in.append(threading.current_thread().name)
        release.wait(5)

    async def scenario() -> HeapTrimmer:
        trimmer = HeapTrimmer(trim, threshold_pixels=1_000)
        trimmer.released(999)  # NOTE: small requests do not trim
        await asyncio.sleep(0.05)
        assert trimmed_in == []
        trimmer.released(1_000)
        trimmer.released(50_000)  # NOTE: while one trim runs, another would return nothing more
        await asyncio.sleep(0.05)
        assert len(trimmed_in) == 1
        release.set()
        for _ in range(100):
            if trimmer.trims == 1:
                break
            await asyncio.sleep(0.01)
        trimmer.released(2_000)  # NOTE: the next large request trims again
        for _ in range(100):
            if trimmer.trims == 2:
                break
            await asyncio.sleep(0.01)
        return trimmer

    trimmer = asyncio.run(scenario())
    assert trimmer.trims == 2 and len(trimmed_in) == 2
    assert threading.main_thread().name not in trimmed_in


def test_glibc_s_trim_is_found_here_and_runs() -> None:
    trim = malloc_trim()
    assert trim is not None  # NOTE: the services run on glibc (Debian) here and in the images
    trim()
    assert HeapTrimmer(None).trim is None  # NOTE: elsewhere: nothing to call, nothing happens
