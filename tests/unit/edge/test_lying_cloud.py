"""A cloud whose ``Server-Timing`` contradicts what the edge measured does not steer ``--cut auto``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from edge_service import EdgeSettings, create_app
from shared.models import LoadedModel, load_model
from shared.protocol import encode_logits
from shared.tail_timings import TailTimings
from shared.wire import WireLimits, read_header
from splitinfer.samples import encode_image, synthetic_image
from tests.unit.edge.test_cut_selector import TINY, _profiles

PICTURE = encode_image(synthetic_image(480, 360, seed=5), "PNG")
Lie = Callable[[int], str]


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_model(TINY, "none")


@pytest.fixture
def lying_edge(loaded: LoadedModel, tmp_path: Path) -> Iterator[Callable[[Lie], TestClient]]:
    """An edge with ``--cut auto`` (calibrating its profiles) whose cloud answers correctly but reports the
    ``Server-Timing`` a function of the payload's size makes up."""
    edge, cloud = _profiles(loaded, input_bytes=len(PICTURE))
    edge.save(tmp_path / "edge.json")
    cloud.save(tmp_path / "cloud.json")
    clients: list[TestClient] = []

    def start(lie: Lie) -> TestClient:
        def cloud_tail(request: httpx.Request) -> httpx.Response:
            time.sleep(0.005)
            cut = read_header(request.content, WireLimits())[0]["cut"]
            logits = encode_logits(torch.zeros(1, 10), model=loaded.name, weights=loaded.digest, cut=cut)
            return httpx.Response(200, content=logits, headers={"Server-Timing": lie(len(request.content))})

        settings = EdgeSettings(
            model=TINY, weights="none", cut="auto", edge_profile=tmp_path / "edge.json",
            cloud_profile=tmp_path / "cloud.json", link_bandwidth="1gbit", link_rtt="1ms",
            replan_interval_s=0.01, min_dwell_s=0, probe_interval_s=60,
        )  # fmt: skip
        client = TestClient(create_app(settings, cloud_transport=httpx.MockTransport(cloud_tail)))
        clients.append(client.__enter__())
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


def _classify(client: TestClient) -> dict[str, object]:
    response = client.post("/v1/classify", files={"image": ("a.png", PICTURE)})
    assert response.status_code == 200, response.text
    assert response.json()["completed_on"] == "cloud"
    return dict(response.json())


def test_a_cloud_claiming_more_time_than_the_round_trip_does_not_calibrate_the_plan(
    lying_edge: Callable[[Lie], TestClient],
) -> None:
    # One reply that says its tail took 31 years: the cloud's calibrated compute became 2e12 ms, every route
    # through the cloud was predicted to take as long, and only ~120 more cloud calls wore it off.
    client = lying_edge(lambda size: "recv;dur=1, decode;dur=999999999999, tail;dur=999999999999, total;dur=2")
    reply = _classify(client)
    assert "cloud_tail" not in reply["timings_ms"]  # type: ignore[operator]
    selection = client.get("/v1/info").json()["cut_selection"]
    assert selection["calibration"]["cloud_calibration_ms"] == 0.0
    assert selection["estimated_link"]["rtt_samples"] == 0
    assert selection["predicted_latency_ms"] < 1000


def test_a_cloud_claiming_more_bytes_than_were_sent_does_not_time_the_link(
    lying_edge: Callable[[Lie], TestClient],
) -> None:
    # A terabyte in a millisecond: the estimate read 8e15 bit/s.
    client = lying_edge(lambda size: 'recv;dur=2, stream;dur=1;desc="999999999999", total;dur=3')
    _classify(client)
    link = client.get("/v1/info").json()["cut_selection"]["estimated_link"]
    assert link["bandwidth_bps"] == 1e9 and link["bandwidth_samples"] == 0


def test_an_honest_cloud_s_timings_are_kept(lying_edge: Callable[[Lie], TestClient]) -> None:
    client = lying_edge(lambda size: f'recv;dur=1.5, stream;dur=1;desc="{size // 2}", tail;dur=1.25, total;dur=2')
    reply = _classify(client)
    assert reply["timings_ms"]["cloud_tail"] == 1.25  # type: ignore[index]
    link = client.get("/v1/info").json()["cut_selection"]["estimated_link"]
    assert link["rtt_samples"] == 1 and link["bandwidth_samples"] == 1


def test_timings_are_checked_against_the_round_trip_and_the_bytes_sent() -> None:
    timings = TailTimings(recv_ms=2.0, stream_ms=1.0, stream_bytes=1000, tail_ms=3.0, total_ms=5.0)
    assert timings.consistent_with(5.0, 1000) == timings
    assert timings.consistent_with(5.004, 1000) == timings  # the header's rounding
    assert timings.consistent_with(4.9, 1000) == TailTimings()
    assert timings.consistent_with(5.0, 999) == TailTimings()
    assert TailTimings(tail_ms=7.0).consistent_with(6.0, 10) == TailTimings()
