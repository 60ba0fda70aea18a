from __future__ import annotations

import subprocess
from typing import Any

import pytest

from splitinfer import serve
from splitinfer.threads import THREADS_ENV, available_cores, share_of_cores


def test_each_of_n_processes_gets_its_share_of_the_cores() -> None:
    assert share_of_cores(2, cores=2) == 1
    assert share_of_cores(2, cores=16) == 8
    assert share_of_cores(3, cores=2) == 1  # never zero
    assert share_of_cores(1) == available_cores()
    with pytest.raises(ValueError):
        share_of_cores(0)


def test_up_gives_edge_and_cloud_half_the_cores_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[dict[str, str]] = []

    def fake_popen(command: list[str], *, env: dict[str, str], **_: Any) -> object:
        started.append(env)
        return object()

    monkeypatch.setattr(subprocess, "Popen", fake_popen)
    monkeypatch.delenv(THREADS_ENV, raising=False)
    serve.start_pair([], [], [])
    assert [env[THREADS_ENV] for env in started] == [str(share_of_cores(2))] * 2
    started.clear()
    monkeypatch.setenv(THREADS_ENV, "3")
    serve.start_pair([], [], [])
    assert [env[THREADS_ENV] for env in started] == ["3", "3"]
