"""Cut ``auto`` while serving: re-planning from the estimated link, hysteresis, probes, and the app's wiring."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from edge_service import EdgeSettings, create_app
from edge_service.cut_selector import CutSelector, SelectorSettings, _key
from edge_service.route_policy import RouteChoice
from edge_service.routes import _dispatch
from edge_service.runtime import EdgeModel, Route
from shared.models import LoadedModel, load_model
from shared.planning import CodecProfile, CutProfile, Profile
from shared.preprocessing import ImageLimits
from shared.protocol import encode_logits
from shared.tail_timings import TailTimings
from shared.wire import WireLimits, read_header
from splitinfer.samples import encode_image, synthetic_image

TINY = "tests.fixture_models:tiny_cnn"
IMAGE_BYTES = 100_000


def _next(selector: CutSelector) -> Route:
    """What a request that asks for no route gets: the policy's choice, dispatched."""
    choice = selector.choose()
    selector.dispatched(choice)
    return choice.route


def _observe(selector: CutSelector, sent: int, round_trip_ms: float, timings: TailTimings) -> None:
    """One cloud call, as the edge's handler feeds it: the link, then a re-plan if it is time."""
    selector.observe_link(sent, round_trip_ms, timings)
    selector.replan()


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_model(TINY, "none")


def _profiles(loaded: LoadedModel, input_bytes: float = IMAGE_BYTES) -> tuple[Profile, Profile]:
    """A slow edge and a fast cloud: ship the image on a fast link, run up to ``mean`` (400 bytes) on a slow one."""

    def side(head: dict[str, float], tail: dict[str, float]) -> Profile:
        relu_codecs = (CodecProfile("fp16", 200_000, 0.5, 0.5, 1e-4), CodecProfile("int8+zstd", 48_000, 1.0, 1.0, 0.05))
        cuts = [
            CutProfile("input", 0, 0.0, tail["input"], (CodecProfile("image", input_bytes, 0.0, 2.0, 0.0),)),
            CutProfile("relu", 2, head["relu"], tail["relu"], relu_codecs),
            CutProfile("mean", 5, head["mean"], tail["mean"], (CodecProfile("fp32", 400, 0.1, 0.1, 0.0),)),
            CutProfile("output", 7, head["output"], 0.0, ()),
        ]
        profile = Profile(loaded.name, loaded.digest, "cpu", 1, 64, {}, cuts)
        profile.image_decode_ms, profile.preprocess_ms = 1.0, 1.0
        return profile

    tails = {"input": 2.0, "relu": 1.5, "mean": 0.1}
    return side({"relu": 5.0, "mean": 20.0, "output": 100.0}, tails), side(
        {"relu": 0.5, "mean": 2.0, "output": 2.5}, tails
    )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _selector(
    loaded: LoadedModel, clock: Clock, bandwidth_bps: float = 1e9, rtt_s: float = 0.001, **options: float
) -> CutSelector:
    edge, cloud = _profiles(loaded)
    settings = SelectorSettings(link_bandwidth=bandwidth_bps, link_rtt=rtt_s, max_logit_error=0.01, **options)
    model = EdgeModel(loaded, ImageLimits())
    return CutSelector(
        model, edge, cloud, settings, codec_for=lambda cut: "image" if cut == "input" else "fp16",
        registry=CollectorRegistry(), clock=clock,
    )  # fmt: skip


def _transfer(selector: CutSelector, clock: Clock, bandwidth_bps: float, rtt_s: float, advance_s: float) -> None:
    """One cloud call of the current route's size over a link of this rate and RTT."""
    clock.now += advance_s
    sent = int(selector.current.bytes_per_image) or IMAGE_BYTES
    recv_ms = sent * 8 / bandwidth_bps * 1000
    total_ms = recv_ms + 4
    _observe(selector, sent, total_ms + rtt_s * 1000, TailTimings(recv_ms=recv_ms, total_ms=total_ms))


def test_starts_with_the_plan_for_the_assumed_link(loaded: LoadedModel) -> None:
    selector = _selector(loaded, Clock())
    assert selector.route.cut.name == "input" and selector.route.codec == "image"
    assert selector.to_json()["switches"] == 0


def test_a_slower_link_moves_the_cut_once_the_dwell_time_is_over(loaded: LoadedModel) -> None:
    clock = Clock()
    selector = _selector(loaded, clock, replan_interval_s=2.0, min_dwell_s=5.0)
    _transfer(selector, clock, 1e6, 0.05, advance_s=2.5)  # re-planned, but the dwell time is not over
    assert selector.route.cut.name == "input"
    _transfer(selector, clock, 1e6, 0.05, advance_s=3.0)
    assert (selector.route.cut.name, selector.route.codec) == ("mean", "fp32")
    info = selector.to_json()
    assert info["switches"] == 1 and info["recent_switches"][0]["to"] == {"cut": "mean", "codec": "fp32"}  # type: ignore[index]
    estimated = info["estimated_link"]
    assert estimated["rtt_ms"] == pytest.approx(50, rel=0.01)  # type: ignore[index]
    assert estimated["bandwidth_bps"] == pytest.approx(1e6, rel=0.01)  # type: ignore[index]
    registry = selector.registry
    assert registry.get_sample_value("splitinfer_cut_switches_total") == 1
    assert registry.get_sample_value("splitinfer_link_rtt_seconds") == pytest.approx(0.05, rel=0.01)


def test_a_link_near_the_crossover_does_not_make_it_flap(loaded: LoadedModel) -> None:
    clock = Clock()
    selector = _selector(loaded, clock, replan_interval_s=1.0, min_dwell_s=0.0)
    # Shipping the image and running up to `mean` cost the same near 47 Mbit/s; within the 5% margin
    # neither is clearly better, so a link wobbling around it never moves the cut.
    for step in range(40):
        _transfer(selector, clock, 44e6 if step % 2 else 50e6, 0.001, advance_s=1.0)
    assert selector.switch_count == 0


def test_a_cut_that_cannot_measure_the_link_probes_it_now_and_then(loaded: LoadedModel) -> None:
    clock = Clock()
    selector = _selector(loaded, clock, replan_interval_s=1.0, min_dwell_s=0.0, probe_interval_s=10.0)
    for _ in range(3):
        _transfer(selector, clock, 1e6, 0.05, advance_s=1.0)
    assert selector.current.cut == "mean"  # 400 bytes: too few to time the link with
    clock.now += 5
    assert _next(selector).cut.name == "mean"
    clock.now += 10
    probe = _next(selector)
    assert probe.cut.name == "input"  # the best cut whose payload is large enough to time
    assert _next(selector).cut.name == "mean"  # one probe per interval


def test_a_probe_that_teaches_nothing_makes_the_next_one_larger(loaded: LoadedModel) -> None:
    clock = Clock()
    selector = _selector(loaded, clock, bandwidth_bps=1e6, rtt_s=0.01, replan_interval_s=0.0, probe_interval_s=10.0)
    assert selector.current.cut == "mean"
    probes = []
    for _ in range(3):  # on a fast link each body arrives in one piece: no probe yields a bandwidth sample
        clock.now += 10
        probes.append(_next(selector).cut.name)
    assert probes == ["input", "relu", "relu"]  # 100 kB >= 64 KiB; then 128 KiB: relu's 200 kB, the largest
    clock.now += 10
    recv_ms = 150_000 * 8 / 50e6 * 1000
    _observe(
        selector,
        200_000,
        recv_ms + 10,
        TailTimings(recv_ms=recv_ms, stream_ms=recv_ms, stream_bytes=150_000, total_ms=recv_ms + 2),
    )
    assert _next(selector).cut.name == "mean"  # it taught something: no probe for 10 s
    assert selector.registry.get_sample_value("splitinfer_link_probes_total") == 3


def test_measured_compute_calibrates_the_plan(loaded: LoadedModel) -> None:
    clock = Clock()
    selector = _selector(loaded, clock, replan_interval_s=1.0, min_dwell_s=0.0)
    route = selector.model.route_for("relu", "fp16")
    for _ in range(30):  # the edge takes 15 ms more than profiled (7.5 ms), the cloud 3 ms more (0.5 + 1.5 ms)
        timings = {"decode": 3.0, "preprocess": 3.0, "head": 15.0, "encode": 1.5}
        selector.observe_request(route, timings, TailTimings(recv_ms=5.0, decode_ms=1.5, tail_ms=3.5, total_ms=11.0))
    assert selector.edge_calibration.value_ms == pytest.approx(15.0)
    assert selector.cloud_calibration.value_ms == pytest.approx(3.0)
    clock.now += 2
    selector.replan()
    output = next(row for row in selector.rows if row.cut == "output")
    assert output.latency_ms == pytest.approx(1 + 1 + 100 + 15)
    assert selector.to_json()["calibration"]["edge_calibration_ms"] == 15.0  # type: ignore[index]


def _served(selector: CutSelector, clock: Clock, cut: str, total_ms: float, advance_s: float = 0.1) -> None:
    """One single-image request through ``cut`` that took ``total_ms`` on the edge, end to end."""
    clock.now += advance_s
    codec = "image" if cut == "input" else "fp32" if cut == "mean" else "fp16"
    route = selector.model.route_for(cut, codec)
    selector.observe_request(route, {"total": total_ms}, TailTimings())


def _near_tie(loaded: LoadedModel, clock: Clock, **options: float) -> CutSelector:
    # At 47 Mbit/s + 10 ms, `mean` (32.4 ms) and `input` (32.8 ms) are predicted within 2% of each other.
    options = {
        "replan_interval_s": 1.0,
        "min_dwell_s": 0.0,
        "calibrate_profiles": False,
        "explore_samples": 3,
        **options,
    }
    return _selector(loaded, clock, bandwidth_bps=47e6, rtt_s=0.01, **options)


def test_a_near_tie_is_explored_and_decided_by_measured_latency(loaded: LoadedModel) -> None:
    clock = Clock()
    selector = _near_tie(loaded, clock)
    assert selector.current.cut == "mean" and selector.exploring is not None and selector.exploring.cut == "input"
    routed = [_next(selector).cut.name for _ in range(12)]
    # Every other request explores `input`, no more of them than it takes to measure it (3).
    assert routed == ["mean", "input"] * 3 + ["mean"] * 6
    assert selector.registry.get_sample_value("splitinfer_route_explorations_total") == 3
    for _ in range(3):
        _served(selector, clock, "mean", 34.0)
        _served(selector, clock, "input", 24.0)  # measured 9 ms faster than predicted; `mean` 1.6 ms slower
    assert selector.exploring is None  # nothing near the best is left unmeasured
    clock.now += 1
    assert selector.replan()
    assert (selector.current.cut, selector.route.cut.name) == ("input", "input")
    # Residuals: `input` -8.8 ms, `mean` +1.6 ms, typical -3.6 ms; each route's 3 samples are shrunk
    # toward the typical as if by 2 more: `input` 32.8 - 6.72 = 26.1 ms, `mean` 32.4 - 0.48 = 31.9 ms.
    assert selector.expected_ms(selector.current) == pytest.approx(26.1, abs=0.05)
    info = selector.to_json()
    assert {(r["cut"], r["samples"]) for r in info["measured_routes"]} == {("mean", 3), ("input", 3)}  # type: ignore[union-attr]
    assert info["recent_switches"][0]["expected_ms"] == {"from": 31.9, "to": 26.1}  # type: ignore[index]


def test_a_few_lucky_requests_do_not_move_the_edge(loaded: LoadedModel) -> None:
    # `input`'s 5 requests have a median 7 ms under `mean`'s (expected 15% faster after shrinking, past the
    # 5% switch margin), but they vary by 8-18 ms: within two standard errors of the difference. It stays.
    clock = Clock()
    selector = _near_tie(loaded, clock, explore_samples=5)
    for current, explored in zip((32.0, 33.0, 34.0, 32.5, 33.5), (18.0, 26.0, 40.0, 22.0, 44.0), strict=True):
        _served(selector, clock, "mean", current)
        _served(selector, clock, "input", explored)
    learned = selector.learned()
    row = next(r for r in selector.rows if r.cut == "input")
    assert learned.known(_key(row)) and learned.expected_ms(row) < 0.95 * learned.expected_ms(selector.current)
    clock.now += 1
    assert not selector.replan() and selector.current.cut == "mean"
    # The same advantage, measured consistently, moves it.
    steady = _near_tie(loaded, clock, explore_samples=5)
    for current, explored in zip((32.0, 33.0, 34.0, 32.5, 33.5), (25.0, 26.0, 27.0, 25.5, 26.5), strict=True):
        _served(steady, clock, "mean", current)
        _served(steady, clock, "input", explored)
    clock.now += 1
    assert steady.replan() and steady.current.cut == "input"


def test_an_explored_route_that_measures_slower_is_left_alone(loaded: LoadedModel) -> None:
    clock = Clock()
    selector = _near_tie(loaded, clock)
    for _ in range(3):
        _served(selector, clock, "mean", 33.0)
        _served(selector, clock, "input", 45.0)
    clock.now += 1
    assert not selector.replan()
    assert selector.current.cut == "mean" and selector.exploring is None


def test_a_route_nobody_measured_is_explored_before_the_edge_moves_to_it(loaded: LoadedModel) -> None:
    clock = Clock()
    selector = _near_tie(loaded, clock, explore_margin=0.15)
    for _ in range(3):
        _served(selector, clock, "mean", 33.0)
    for _ in range(3):  # the link gets faster: 60 Mbit/s makes `input` (28.9 ms) 11% better than `mean` (32.4)
        clock.now += 1
        recv_ms = 100_000 * 8 / 60e6 * 1000
        _observe(selector, 100_000, recv_ms + 14, TailTimings(recv_ms=recv_ms, total_ms=recv_ms + 4))
    assert selector.current.cut == "mean"
    clock.now += 1
    assert not selector.replan()  # 11% is within the exploring margin (15%): measure `input` first
    assert selector.current.cut == "mean" and selector.exploring is not None and selector.exploring.cut == "input"
    for _ in range(3):
        _served(selector, clock, "input", 29.0)
    clock.now += 1
    assert selector.replan() and selector.current.cut == "input"


def test_measurements_expire_and_are_taken_again(loaded: LoadedModel) -> None:
    clock = Clock()
    selector = _near_tie(loaded, clock, measurement_ttl_s=60.0)
    for _ in range(3):
        _served(selector, clock, "mean", 33.0)
        _served(selector, clock, "input", 45.0)
    clock.now += 1
    selector.replan()
    assert selector.exploring is None
    for _ in range(70):  # a minute of requests through the current cut only
        _served(selector, clock, "mean", 33.0, advance_s=1.0)
    selector.replan()
    assert selector.exploring is not None and selector.exploring.cut == "input"


def test_measurements_from_a_different_link_are_not_trusted(loaded: LoadedModel) -> None:
    clock = Clock()
    selector = _near_tie(loaded, clock)
    for _ in range(3):
        _served(selector, clock, "input", 30.0)
    assert selector.learned().known(("input", "image"))
    for _ in range(3):  # 20 Mbit/s: `input` is now predicted 56.8 ms, not 32.8: what it measured then says little
        clock.now += 1
        recv_ms = 100_000 * 8 / 20e6 * 1000
        _observe(selector, 100_000, recv_ms + 14, TailTimings(recv_ms=recv_ms, total_ms=recv_ms + 4))
    assert not selector.learned().known(("input", "image"))


def test_one_cut_s_codecs_do_not_crowd_other_cuts_out_of_exploring(loaded: LoadedModel) -> None:
    # `mean` with three more codecs, each predicted a little better than the last: the three routes nearest
    # the best are all `mean`'s. `input`, within the margin too, must still be explored.
    edge, cloud = _profiles(loaded)
    extra = tuple(CodecProfile(f"int{bits}+ans", 400 - bits, 0.1 + bits / 100, 0.1, 0.001) for bits in (4, 5, 6))
    for profile in (edge, cloud):
        mean = next(cut for cut in profile.cuts if cut.name == "mean")
        profile.cuts[profile.cuts.index(mean)] = dataclasses.replace(mean, codecs=mean.codecs + extra)
    settings = SelectorSettings(link_bandwidth=47e6, link_rtt=0.01, max_logit_error=0.01, explore_samples=3)
    selector = CutSelector(
        EdgeModel(loaded, ImageLimits()), edge, cloud, settings,
        codec_for=lambda cut: "image" if cut == "input" else "fp32", registry=CollectorRegistry(), clock=Clock(),
    )  # fmt: skip
    ranked = [(row.cut, row.codec) for row in sorted(selector.rows, key=lambda row: row.latency_ms)]
    assert [cut for cut, _ in ranked[:4]] == ["mean"] * 4 and ranked[4] == ("input", "image")
    assert selector.current.cut == "mean"
    assert selector.exploring is not None and (selector.exploring.cut, selector.exploring.codec) == ("input", "image")


def test_a_route_expected_slower_is_explored_only_as_the_budget_allows(loaded: LoadedModel) -> None:
    # At 40 Mbit/s + 10 ms, `input` (35.9 ms) is expected 11% slower than `mean` (32.4 ms): within the
    # exploring margin, so it is measured, but each exploration is expected to cost 3.5 ms, and 2% of the
    # current route's 32.4 ms is saved per ordinary request: 6 of them pay for one exploration.
    clock = Clock()
    selector = _selector(
        loaded, clock, bandwidth_bps=40e6, rtt_s=0.01, replan_interval_s=1.0, min_dwell_s=0.0,
        calibrate_profiles=False, explore_samples=3, explore_budget=0.02,
    )  # fmt: skip
    assert selector.current.cut == "mean" and selector.exploring is not None and selector.exploring.cut == "input"
    extra_ms = selector.exploring.latency_ms - selector.current.latency_ms
    assert extra_ms / selector.current.latency_ms == pytest.approx(0.109, abs=0.001)
    routed = [_next(selector).cut.name for _ in range(40)]
    explored = [i for i, cut in enumerate(routed) if cut == "input"]
    assert explored == [6, 13, 20]  # then no more: 3 samples measure the route
    window = routed[: explored[-1] + 1]  # up to the last exploration, which the savings before it paid for
    spent, served = extra_ms * len(explored), selector.current.latency_ms * window.count("mean")
    assert spent <= 0.02 * served
    assert selector.to_json()["exploring"]["expected_extra_ms"] == pytest.approx(extra_ms, abs=0.001)  # type: ignore[index]


def test_the_edge_decides_a_request_s_route_and_records_it_in_one_step(loaded: LoadedModel) -> None:
    # Requests read their bodies concurrently; each is routed once its images are read, and the choice
    # is recorded in the same step: of requests that finish reading together, one explores.
    selector = _near_tie(loaded, Clock())
    state = SimpleNamespace(routes=selector)
    assert selector.exploring is not None and selector.exploring.cut == "input"
    purposes = [_dispatch(state, None, 1).purpose for _ in range(4)]  # type: ignore[arg-type]
    assert purposes == ["current", "explore", "current", "explore"]
    # A batch never explores (it would cost every image and teach nothing); a pinned request neither
    # explores nor counts as an ordinary request that pays for exploring.
    assert _dispatch(state, None, 3).purpose == "current"  # type: ignore[arg-type]
    pinned = RouteChoice(selector.model.route_for("output", None), "pinned")
    assert _dispatch(state, pinned, 1) is pinned  # type: ignore[arg-type]
    assert _dispatch(state, pinned, 1) is pinned  # type: ignore[arg-type]
    assert _dispatch(state, None, 1).purpose == "explore"  # type: ignore[arg-type]


def test_exploring_can_be_turned_off(loaded: LoadedModel) -> None:
    selector = _near_tie(loaded, Clock(), explore_margin=0.0)
    assert selector.exploring is None
    assert {_next(selector).cut.name for _ in range(10)} == {"mean"}


def test_the_rate_is_timed_on_the_body_after_its_first_chunk(loaded: LoadedModel) -> None:
    selector = _selector(loaded, Clock())
    # 5 Mbit/s with a 16 kB burst: the whole body reads 6.2 Mbit/s, the part after the burst 5 Mbit/s.
    streamed = 100_000 - 16_000
    recv_ms = streamed * 8 / 5e6 * 1000
    timing = TailTimings(recv_ms=recv_ms, stream_ms=recv_ms, stream_bytes=streamed, total_ms=200.0)
    _observe(selector, 100_000, 250.0, timing)
    assert selector.estimator.estimate.bandwidth_bps == pytest.approx(5e6)
    older_cloud = _selector(loaded, Clock())
    _observe(older_cloud, 100_000, 250.0, TailTimings(recv_ms=recv_ms, total_ms=200.0))  # no `stream`: the whole body
    assert older_cloud.estimator.estimate.bandwidth_bps == pytest.approx(100_000 * 8 / (recv_ms / 1000))


def test_without_recv_and_total_nothing_is_learned(loaded: LoadedModel) -> None:
    selector = _selector(loaded, Clock())
    _observe(selector, 100_000, 50.0, TailTimings(tail_ms=3.0))
    assert selector.estimator.estimate.rtt_samples == 0


# --- the app: estimates and switches from real requests (the cloud faked, the link in its timings) ---

PICTURE = encode_image(synthetic_image(480, 360, seed=5), "PNG")


@pytest.fixture
def auto_edge(loaded: LoadedModel, tmp_path: Path) -> Iterator[TestClient]:
    edge, cloud = _profiles(loaded, input_bytes=len(PICTURE))
    edge.save(tmp_path / "edge.json")
    cloud.save(tmp_path / "cloud.json")

    def cloud_tail(request: httpx.Request) -> httpx.Response:
        # An 8 Mbit/s link with a 10 ms RTT, as the cloud would report it.
        recv_ms = len(request.content) * 8 / 8e6 * 1000
        time.sleep((recv_ms + 12) / 1000)
        cut = read_header(request.content, WireLimits())[0]["cut"]  # NOTE: the edge checks the reply's cut
        logits = encode_logits(torch.zeros(1, 10), model=loaded.name, weights=loaded.digest, cut=cut)
        timing = f"recv;dur={recv_ms:.3f}, total;dur={recv_ms + 2:.3f}"
        return httpx.Response(200, content=logits, headers={"Server-Timing": timing})

    settings = EdgeSettings(
        model=TINY, weights="none", cut="auto", edge_profile=tmp_path / "edge.json",
        cloud_profile=tmp_path / "cloud.json", link_bandwidth="1gbit", link_rtt="1ms",
        replan_interval_s=0.01, min_dwell_s=0, probe_interval_s=60, calibrate_profiles=False,
    )  # fmt: skip
    with TestClient(create_app(settings, cloud_transport=httpx.MockTransport(cloud_tail))) as client:
        yield client


def test_the_edge_moves_its_cut_when_real_requests_show_a_slower_link(auto_edge: TestClient) -> None:
    assert auto_edge.get("/v1/info").json()["cut"]["name"] == "input"
    cuts = []
    for _ in range(4):
        response = auto_edge.post("/v1/classify", files={"image": ("a.png", PICTURE)})
        assert response.status_code == 200, response.text
        cuts.append(response.json()["cut"])
    assert cuts[0] == "input" and cuts[-1] == "mean"
    info = auto_edge.get("/v1/info").json()
    assert info["cut"]["name"] == "mean" and info["cut_selection"]["switches"] == 1
    assert info["cut_selection"]["estimated_link"]["bandwidth_bps"] == pytest.approx(8e6, rel=0.01)
    assert 8 <= info["cut_selection"]["estimated_link"]["rtt_ms"] <= 40
    metrics = auto_edge.get("/metrics").text
    assert "splitinfer_cut_switches_total 1.0" in metrics
    assert 'cut="mean"' in metrics and "splitinfer_link_bandwidth_bits_per_second 8" in metrics


def test_a_request_can_pin_its_cut(auto_edge: TestClient) -> None:
    response = auto_edge.post("/v1/classify?cut=output", files={"image": ("a.png", PICTURE)})
    assert response.status_code == 200 and response.json()["cut"] == "output"
    unknown = auto_edge.post("/v1/classify?cut=layer9", files={"image": ("a.png", PICTURE)})
    assert unknown.status_code == 422 and "layer9" in unknown.json()["detail"]
    misfit = auto_edge.post("/v1/classify?cut=mean&codec=jpeg", files={"image": ("a.png", PICTURE)})
    assert misfit.status_code == 422 and "does not fit cut" in misfit.json()["detail"]
    # `output` sends nothing: any codec is ignored there, but a name that is no codec is still a mistake.
    ignored = auto_edge.post("/v1/classify?cut=output&codec=fp16", files={"image": ("a.png", PICTURE)})
    assert ignored.status_code == 200 and ignored.json()["codec"] == "none"
    garbage = auto_edge.post("/v1/classify?cut=output&codec=garbage", files={"image": ("a.png", PICTURE)})
    assert garbage.status_code == 422 and "'garbage' is not a codec" in garbage.json()["detail"]


def test_the_request_that_builds_a_split_times_it_apart(auto_edge: TestClient) -> None:
    first, second = (auto_edge.post("/v1/classify?cut=relu", files={"image": ("a.png", PICTURE)}) for _ in range(2))
    assert first.status_code == second.status_code == 200
    assert first.json()["timings_ms"]["build"] > 0  # not in `head`: the selector does not learn from it
    assert "build" not in second.json()["timings_ms"]


def test_info_says_what_the_fidelity_guard_admits(loaded: LoadedModel) -> None:
    """A profile measured on generated pictures admits half of MAX_LOGIT_ERROR as measured: /v1/info says so."""
    edge, cloud = _profiles(loaded)
    edge.images = "generated"
    settings = SelectorSettings(link_bandwidth=1e9, link_rtt=0.001, max_logit_error=0.01)
    selector = CutSelector(
        EdgeModel(loaded, ImageLimits()), edge, cloud, settings, codec_for=lambda cut: "fp16",
        registry=CollectorRegistry(), clock=Clock(),
    )  # fmt: skip
    assert selector.to_json()["fidelity_guard"] == {
        "max_logit_error": 0.01,
        "errors_measured_on": "generated",
        "error_factor": 2.0,
        "largest_measured_error_admitted": 0.005,
    }
