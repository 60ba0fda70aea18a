"""DNS rebinding against a real loopback-bound service: a request naming another host gets 421, unless
``--allowed-hosts`` names it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from splitinfer.processes import Service, start_service, wait_until

pytestmark = pytest.mark.e2e

TINY = ["--model", "tests.fixture_models:tiny_cnn", "--weights", "none"]


def test_a_rebound_name_is_refused_and_an_allowed_one_answered(tmp_path: Path, stop_all: list[Service]) -> None:
    """A page of rebind.example that resolved its name to 127.0.0.1 read the cloud's /v1/info (200) as its
    own origin's, and could run its tails."""
    cloud = start_service("cloud", TINY, tmp_path)
    stop_all.append(cloud)
    wait_until(cloud)
    rebound = httpx.get(cloud.url + "/v1/info", headers={"host": f"rebind.example:{cloud.port}"}, timeout=10)
    assert rebound.status_code == 421, rebound.text
    assert httpx.get(cloud.url + "/v1/info", timeout=10).status_code == 200  # Host: 127.0.0.1:PORT
    cloud.stop()

    allowing = start_service("cloud", [*TINY, "--allowed-hosts", "rebind.example"], tmp_path)
    stop_all.append(allowing)
    wait_until(allowing)
    answered = httpx.get(allowing.url + "/v1/info", headers={"host": "rebind.example"}, timeout=10)
    assert answered.status_code == 200
