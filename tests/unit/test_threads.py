from __future__ import annotations

import pytest

from splitinfer.threads import THREADS_ENV, available_cores, pair_threads_env, share_of_cores


def test_each_of_n_processes_gets_its_share_of_the_cores() -> None:
    assert share_of_cores(2, cores=2) == 1
    assert share_of_cores(2, cores=16) == 8
    assert share_of_cores(3, cores=2) == 1  # never zero
    assert share_of_cores(1) == available_cores()
    with pytest.raises(ValueError):
        share_of_cores(0)


def test_up_gives_edge_and_cloud_half_the_cores_unless_told() -> None:
    assert pair_threads_env({}) == {THREADS_ENV: str(share_of_cores(2))}
    assert pair_threads_env({THREADS_ENV: "3"}) == {}  # the environment's value reaches both, unchanged
