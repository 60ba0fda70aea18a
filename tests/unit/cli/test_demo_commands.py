"""The commands ``splitinfer demo`` prints to try reach the edge it started, on whatever port."""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Callable
from typing import Any

import pytest

from splitinfer import cli


@pytest.mark.parametrize("edge_port", [8000, 18123])
def test_the_printed_commands_reach_the_demo_edge(
    edge_port: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: `demo --edge-port 18123` printed `splitinfer classify SAMPLE`, which asks the default edge
    # (:8000): another service, or a connection refused.
    def run_pair(args: argparse.Namespace, ready: Callable[[], None]) -> int:
        ready()
        return 0

    def classify_files(edge_url: str, paths: Any, top_k: int) -> list[tuple[str, dict[str, Any]]]:
        assert edge_url == f"http://127.0.0.1:{edge_port}"
        return []

    monkeypatch.setattr(cli, "_run_pair", run_pair)
    monkeypatch.setattr(cli, "_classify_files", classify_files)
    args = cli.build_parser().parse_args(["demo", "--edge-port", str(edge_port)])
    assert cli._cmd_demo(args) == 0

    printed = capsys.readouterr().out
    (curl,) = re.findall(r"^  curl .*$", printed, flags=re.M)
    assert f"http://127.0.0.1:{edge_port}/v1/classify" in curl
    (classify,) = re.findall(r"^  \S*splitinfer classify .*$", printed, flags=re.M)
    argv = shlex.split(classify)[1:]
    assert cli.build_parser().parse_args(argv).edge_url.rstrip("/") == f"http://127.0.0.1:{edge_port}"
