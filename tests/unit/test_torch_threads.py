"""The service's torch thread count holds in every thread that runs torch, not only where it was set."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from service_core.torch_threads import TorchThreads

# NOTE: counts the process's OS threads around a parallel op: OpenMP starts its team's extra threads the
# first time a thread runs a parallel region with more than one thread.
_PROBE = textwrap.dedent(
    """
    import os, sys
    from concurrent.futures import ThreadPoolExecutor
    import torch
    from service_core.torch_threads import TorchThreads

    threads = TorchThreads(1)
    with ThreadPoolExecutor(1) as loader:  # as the services load their model: in a worker thread
        loader.submit(threads.apply).result()
    apply = sys.argv[1] == "apply"
    x = torch.rand(256, 2048)

    def work():
        for _ in range(20):
            x @ x.T

    before = len(os.listdir("/proc/self/task"))
    if apply:
        threads.apply()
    work()  # the event loop's thread
    with ThreadPoolExecutor(1, initializer=threads.apply if apply else None) as executor:
        executor.submit(work).result()
        print(len(os.listdir("/proc/self/task")) - before - 1)  # minus the executor's own thread
    """
)


def _extra_threads(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = os.getcwd()
    done = subprocess.run([sys.executable, "-c", _PROBE, mode], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip())


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores for OpenMP to start a team")
def test_a_thread_count_set_while_loading_holds_on_the_loop_and_executor_threads() -> None:
    # NOTE: the old behaviour (torch.set_num_threads in the loading thread only) shows as OpenMP's extra
    # team threads; with the count applied in each thread that runs torch, there are none.
    assert _extra_threads("control") >= 1
    assert _extra_threads("apply") == 0


def test_wrap_applies_in_the_thread_that_runs() -> None:
    seen: list[int] = []
    wrapped = TorchThreads(None).wrap(lambda a, b: seen.append(a + b))
    wrapped(1, 2)
    assert seen == [3]


# NOTE: as a service runs: the model loaded off the loop, the loop's thread doing torch work, an executor
# running the model; prints the process's OS threads at the end. ``mode`` undoes one of the two measures.
_SERVICE_PROBE = textwrap.dedent(
    """
    import asyncio, os, sys
    from concurrent.futures import ThreadPoolExecutor
    import torch
    from service_core.torch_threads import TorchThreads, load_in_own_thread

    mode = sys.argv[1]
    threads = TorchThreads(2)

    def work():
        x = torch.rand(256, 2048)
        for _ in range(20):
            x @ x.T

    def load():
        threads.apply()
        work()

    async def main():
        if mode == "loader kept":
            loader = ThreadPoolExecutor(1)
            await asyncio.get_running_loop().run_in_executor(loader, load)
        else:
            await load_in_own_thread(load)
        threads.apply() if mode == "loop counted" else threads.apply_light()
        work()  # the event loop's thread
        with ThreadPoolExecutor(1, initializer=threads.apply) as executor:
            executor.submit(work).result()
            print(len(os.listdir("/proc/self/task")))

    asyncio.run(main())
    """
)


def _service_threads(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = os.getcwd()
    done = subprocess.run(
        [sys.executable, "-c", _SERVICE_PROBE, mode], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip())


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores for OpenMP to start a team")
def test_only_the_model_executor_keeps_an_openmp_team() -> None:
    # NOTE: a second team (kept by the thread that loaded the model, or by the loop's thread) makes GNU
    # OpenMP throttle every team's spin-wait once the process has more OpenMP threads than cores: the
    # model's parallel regions then wait on futexes. Each such team shows as one more OS thread here
    # (a kept loader also counts itself).
    served = _service_threads("as served")
    assert _service_threads("loader kept") == served + 2
    assert _service_threads("loop counted") == served + 1
