from __future__ import annotations

import pytest

from splitinfer.threads import (
    PAIR_SPIN_COUNT,
    SPIN_COUNT_ENV,
    THREADS_ENV,
    WAIT_POLICY_ENV,
    available_cores,
    pair_threads_env,
    share_of_cores,
)


def test_each_of_n_processes_gets_its_share_of_the_cores() -> None:
    assert share_of_cores(2, cores=2) == 1
    assert share_of_cores(2, cores=16) == 8
    assert share_of_cores(3, cores=2) == 1  # never zero
    assert share_of_cores(1) == available_cores()
    with pytest.raises(ValueError):
        share_of_cores(0)


def test_up_gives_edge_and_cloud_every_core_with_briefly_spinning_idle_threads_unless_told() -> None:
    assert pair_threads_env({}) == {THREADS_ENV: str(available_cores()), SPIN_COUNT_ENV: PAIR_SPIN_COUNT}
    assert pair_threads_env({THREADS_ENV: "3"}) == {SPIN_COUNT_ENV: PAIR_SPIN_COUNT}  # the environment's reaches both
    assert pair_threads_env({THREADS_ENV: "3", WAIT_POLICY_ENV: "PASSIVE"}) == {}
    assert pair_threads_env({SPIN_COUNT_ENV: "0"}) == {THREADS_ENV: str(available_cores())}
