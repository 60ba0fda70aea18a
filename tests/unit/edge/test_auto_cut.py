"""Edge ``--cut auto``: the planner picks the cut at startup from the two profiles and the assumed link."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from edge_service import EdgeSettings, create_app
from shared.models import load_model
from shared.planning import Profile, profile_model
from splitinfer.samples import encode_image, synthetic_image

TINY = "tests.fixture_models:tiny_cnn"


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("profiles") / "tiny.json"
    profile_model(load_model(TINY, "none"), [encode_image(synthetic_image())], repeats=2).save(path)
    return path


@pytest.fixture(scope="module")
def weak_edge(profile: Path) -> Path:
    """The same profile as measured on an edge device a million times slower than this machine (so that no
    noise in the measured profile, on a loaded machine, can make any head worth running there)."""
    measured = Profile.load(profile)
    measured.cuts = [replace(c, head_ms=c.head_ms * 1e6) for c in measured.cuts]
    path = profile.with_name("weak-edge.json")
    measured.save(path)
    return path


def _info(edge: Path, cloud: Path, bandwidth: str, rtt: str) -> dict[str, object]:
    settings = EdgeSettings(
        model=TINY, weights="none", cut="auto", edge_profile=edge, cloud_profile=cloud,
        link_bandwidth=bandwidth, link_rtt=rtt,
    )  # fmt: skip
    with TestClient(create_app(settings)) as client:
        info: dict[str, object] = client.get("/v1/info").json()
    return info


def test_a_slow_link_keeps_everything_on_the_edge(profile: Path) -> None:
    info = _info(profile, profile, "1kbit", "200ms")
    assert info["cut"]["name"] == "output"  # type: ignore[index]
    selection = info["cut_selection"]
    assert selection["mode"] == "auto" and selection["assumed_link"]["bandwidth_bps"] == 1000  # type: ignore[index]


def test_a_weak_edge_on_a_fast_link_ships_the_image(profile: Path, weak_edge: Path) -> None:
    info = _info(weak_edge, profile, "1gbit", "1ms")
    assert info["cut"]["name"] == "input" and info["codec"] == "image"  # type: ignore[index]
    assert info["cut_selection"]["predicted_latency_ms"] > 0  # type: ignore[index]


def test_auto_needs_both_profiles(profile: Path) -> None:
    with pytest.raises(ValueError, match="cut 'auto' needs CLOUD_PROFILE"):
        EdgeSettings(cut="auto", edge_profile=profile)
    with pytest.raises(ValueError, match="cannot read bandwidth"):
        EdgeSettings(cut="auto", edge_profile=profile, cloud_profile=profile, link_bandwidth="fast")


def test_plan_refuses_a_link_whose_latencies_it_cannot_predict(profile: Path) -> None:
    """An RTT of 400 nines seconds (infinite as a float) or a rate of 1e-306 bit/s made every predicted latency
    infinite: /v1/plan answered 200 with ``latency_ms: null`` at every cut but output (its schema says a
    number; the demo page's chart then failed on ``null.toFixed``). Each is a 422 naming the link."""
    settings = EdgeSettings(model=TINY, weights="none", cut="stem", edge_profile=profile, cloud_profile=profile)  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/plan", params={"bandwidth": "1kbit", "rtt": "200ms"}).status_code == 200
        for link in ({"rtt": "9" * 400 + "s"}, {"bandwidth": "0." + "0" * 305 + "1bit"}):
            response = client.get("/v1/plan", params=link)
            assert response.status_code == 422, (link, response.text[:300])
            assert response.headers["content-type"] == "application/problem+json"


def test_a_probe_to_a_dead_cloud_is_answered_on_the_edge(profile: Path) -> None:
    """On cut ``output`` the edge needs no cloud (its /readyz says so), but now and then it routes a request
    through the cloud to time the link: with the cloud gone, that request is finished on the edge, not failed
    (it got 503, one request per PROBE_INTERVAL_S, with fallback ``none``)."""
    attempts: list[str] = []

    def dead_cloud(request: httpx.Request) -> httpx.Response:
        attempts.append(request.url.path)
        raise httpx.ConnectError("connection refused", request=request)

    settings = EdgeSettings(
        model=TINY, weights="none", cut="auto", edge_profile=profile, cloud_profile=profile,
        link_bandwidth="1kbit", link_rtt="200ms", probe_interval_s=1e-6, connect_retries=0, fallback="none",
    )  # fmt: skip
    image = encode_image(synthetic_image(seed=3))
    with TestClient(create_app(settings, cloud_transport=httpx.MockTransport(dead_cloud))) as client:
        assert client.get("/v1/info").json()["cut"]["name"] == "output"
        responses = [client.post("/v1/classify", files={"image": ("a.jpg", image)}) for _ in range(3)]
        assert client.get("/readyz").json()["cloud"] == "not needed (cut 'output')"
    assert "/v1/tail" in attempts  # the probes went out
    assert [r.status_code for r in responses] == [200, 200, 200], [r.text for r in responses]
    assert {r.json()["completed_on"] for r in responses} == {"edge"}


def test_requests_that_pin_their_route_teach_the_selector_nothing(profile: Path) -> None:
    """A client picks a pinned request's route (``?cut=``) and its images: learning from them let one client
    steer every client's route (a few large photos pinned to a route made it look slow, and their decode time
    inflated the edge's calibration for every cut). Unpinned requests still teach it."""
    settings = EdgeSettings(
        model=TINY, weights="none", cut="auto", edge_profile=profile, cloud_profile=profile,
        link_bandwidth="1kbit", link_rtt="200ms", probe_interval_s=1e9,
    )  # fmt: skip
    image = encode_image(synthetic_image(seed=4))
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/info").json()["cut"]["name"] == "output"
        for _ in range(4):
            pinned = client.post("/v1/classify", params={"cut": "output"}, files={"image": ("a.jpg", image)})
            assert pinned.status_code == 200, pinned.text
        selection = client.get("/v1/info").json()["cut_selection"]
        assert (selection["calibration"]["samples"], selection["measured_routes"]) == (0, [])
        for _ in range(4):
            assert client.post("/v1/classify", files={"image": ("a.jpg", image)}).status_code == 200
        selection = client.get("/v1/info").json()["cut_selection"]
        assert selection["calibration"]["samples"] == 4
