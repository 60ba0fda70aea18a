from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from shared.models import load_model
from shared.planning import (
    FRAMING_OVERHEAD,
    GENERATED_ERROR_FACTOR,
    GENERATED_IMAGES,
    PROFILE_CODECS,
    CodecProfile,
    CutProfile,
    Profile,
    fidelity_guard,
    fidelity_guard_note,
    pareto,
    plan,
    profile_model,
)
from splitinfer.samples import encode_image, synthetic_image


def _profile(head: dict[str, float], tail: dict[str, float]) -> Profile:
    cuts = []
    for index, name in enumerate(["input", "mid", "output"]):
        codecs = {
            "input": (CodecProfile("image", 50_000, 0.0, 5.0, 0.0),),
            "mid": (CodecProfile("fp32", 400_000, 1.0, 1.0, 0.0), CodecProfile("int8+zstd", 40_000, 3.0, 2.0, 0.5)),
            "output": (),
        }[name]
        cuts.append(CutProfile(name, index, head[name], tail[name], codecs))
    return Profile("m", "sha256:x", "cpu", 2, 224, {}, cuts)


EDGE = _profile({"input": 0.0, "mid": 20.0, "output": 100.0}, {"input": 100.0, "mid": 80.0, "output": 0.0})
CLOUD = _profile({"input": 0.0, "mid": 2.0, "output": 10.0}, {"input": 10.0, "mid": 8.0, "output": 0.0})


def test_plan_arithmetic_and_choice_follow_the_link() -> None:
    slow = plan(EDGE, CLOUD, bandwidth_bps=1e6, rtt_s=0.05)
    assert slow[0].cut == "output"  # 1 Mbit/s: shipping anything costs more than computing it all
    assert slow[0].latency_ms == 100.0
    fast = plan(EDGE, CLOUD, bandwidth_bps=1e9, rtt_s=0.001)
    best = fast[0]
    assert (best.cut, best.codec) == ("input", "image")
    assert best.latency_ms == pytest.approx(0.0 + 50_000 * FRAMING_OVERHEAD * 8 / 1e9 * 1000 + 1.0 + 5.0 + 10.0)


def test_lossy_codecs_respect_the_fidelity_bound() -> None:
    strict = plan(EDGE, CLOUD, bandwidth_bps=5e6, rtt_s=0.02, max_logit_error=0.01)
    assert "int8+zstd" not in {r.codec for r in strict}
    loose = plan(EDGE, CLOUD, bandwidth_bps=5e6, rtt_s=0.02, max_logit_error=1.0)
    assert "int8+zstd" in {r.codec for r in loose}
    by_bytes = plan(EDGE, CLOUD, bandwidth_bps=5e6, rtt_s=0.02, objective="bytes", max_logit_error=1.0)
    assert by_bytes[0].cut == "output" and by_bytes[1].codec == "int8+zstd"


def test_errors_measured_on_generated_pictures_count_more_against_the_guard() -> None:
    from dataclasses import replace

    # NOTE: int8+zstd's measured error is 0.5; the guard is just above it.
    guard = 0.5 * (1 + GENERATED_ERROR_FACTOR) / 2
    on_photos = replace(EDGE, images="photos/")
    generated = replace(EDGE, images=GENERATED_IMAGES)
    admitted = plan(on_photos, CLOUD, bandwidth_bps=5e6, rtt_s=0.02, max_logit_error=guard)
    assert "int8+zstd" in {r.codec for r in admitted}
    assert "int8+zstd" not in {
        r.codec for r in plan(generated, CLOUD, bandwidth_bps=5e6, rtt_s=0.02, max_logit_error=guard)
    }
    loose = plan(generated, CLOUD, bandwidth_bps=5e6, rtt_s=0.02, max_logit_error=0.5 * GENERATED_ERROR_FACTOR)
    assert [r.relative_l2_error for r in loose if r.codec == "int8+zstd"] == [0.5]  # NOTE: reported as measured


def test_the_guard_and_its_note_say_how_much_passes() -> None:
    from dataclasses import replace

    generated = replace(EDGE, images=GENERATED_IMAGES)
    assert fidelity_guard(generated, 0.01) == {
        "max_logit_error": 0.01,
        "errors_measured_on": "generated",
        "error_factor": GENERATED_ERROR_FACTOR,
        "largest_measured_error_admitted": 0.01 / GENERATED_ERROR_FACTOR,
    }
    note = fidelity_guard_note(generated, 0.01)
    assert note is not None and "exceeds 0.005 are left out" in note
    on_photos = replace(EDGE, images="photos/")
    assert fidelity_guard(on_photos, 0.01)["largest_measured_error_admitted"] == 0.01
    assert fidelity_guard_note(on_photos, 0.01) is None


def test_pareto_front_drops_dominated_rows() -> None:
    rows = plan(EDGE, CLOUD, bandwidth_bps=20e6, rtt_s=0.03, max_logit_error=1.0)
    front = pareto(rows)
    assert ("mid", "fp32") not in {(r.cut, r.codec) for r in front}  # int8+zstd or input beat it
    assert ("output", None) in {(r.cut, r.codec) for r in front}  # the fewest bytes


def test_profile_a_model_and_round_trip_the_file(tmp_path: Path) -> None:
    loaded = load_model("tests.fixture_models:tiny_cnn", "none")
    profile = profile_model(loaded, [encode_image(synthetic_image())], repeats=2)
    names = [c.name for c in profile.cuts]
    assert names[0] == "input" and names[-1] == "output"
    middle = next(c for c in profile.cuts if c.name == "stem")
    assert {p.codec for p in middle.codecs} == set(PROFILE_CODECS)
    assert {"int6+ans", "budget10+ans", "dct10+ans"} <= set(PROFILE_CODECS)
    assert next(p for p in middle.codecs if p.codec == "fp32").relative_l2_error == 0.0
    path = tmp_path / "profile.json"
    profile.save(path)
    assert Profile.load(path) == profile
    assert plan(profile, profile, bandwidth_bps=1e7, rtt_s=0.01)


def test_profile_sizes_are_means_over_the_images_and_the_image_path_is_timed() -> None:
    loaded = load_model("tests.fixture_models:tiny_cnn", "none")
    small, large = encode_image(synthetic_image(seed=1)), encode_image(synthetic_image(640, 480, seed=2))
    profile = profile_model(loaded, [small, large], repeats=1)
    image = next(c for c in profile.cuts if c.name == "input").codecs[0]
    alone = [
        next(c for c in profile_model(loaded, [blob], repeats=1).cuts if c.name == "input").codecs[0].bytes_per_image
        for blob in (small, large)
    ]
    assert image.bytes_per_image == pytest.approx(sum(alone) / 2)
    assert image.bytes_per_image > (len(small) + len(large)) / 2  # the container's header is shipped too
    assert image.encode_ms > 0 and image.decode_ms > 0  # the cloud decodes the payload and the JPEG
    assert profile.image_decode_ms > 0 and profile.preprocess_ms > 0
    assert profile.reply_bytes > 10 * 4  # one image's 10 logits in a wire payload


def test_older_profiles_without_the_image_fields_still_load(tmp_path: Path) -> None:
    loaded = load_model("tests.fixture_models:tiny_cnn", "none")
    data = profile_model(loaded, [encode_image(synthetic_image())], repeats=1).to_json()
    for key in ("image_decode_ms", "preprocess_ms", "reply_bytes"):
        del data[key]
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert Profile.load(tmp_path / "old.json").image_decode_ms == 0.0


@pytest.mark.parametrize(
    "change",
    [{"total_ms": 45.6, "spread": 0.06}, {"cuts": [{"name": "input"}]}, {"cuts": 5}],
    ids=["fields of another version", "a cut without its times", "cuts not a list"],
)
def test_a_file_that_is_not_a_profile_is_a_value_error_naming_it(tmp_path: Path, change: dict[str, object]) -> None:
    """What the services and the CLI report in one line (an expected error), not a TypeError's traceback."""
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(EDGE.to_json() | change))
    with pytest.raises(ValueError, match=r"profile\.json is not a profile .* `splitinfer profile`"):
        Profile.load(path)


def test_compact_codecs_are_planned_per_cut_by_their_measured_error() -> None:
    loaded = load_model("tests.fixture_models:tiny_cnn", "none")
    profile = profile_model(loaded, [encode_image(synthetic_image())], repeats=1)
    measured = [(cut.name, codec) for cut in profile.cuts for codec in cut.codecs if cut.name != "input"]
    bound = sorted(c.relative_l2_error for _, c in measured if c.codec == "budget20+ans")[len(profile.cuts) // 4]
    routes = {(r.cut, r.codec) for r in plan(profile, profile, bandwidth_bps=1e6, rtt_s=0.01, max_logit_error=bound)}
    for cut, codec in measured:
        assert ((cut, codec.codec) in routes) == (codec.relative_l2_error <= bound), (cut, codec)
    assert any(codec is not None and codec.endswith("+ans") for _, codec in routes)  # NOTE: output sends none
    strict = plan(profile, profile, bandwidth_bps=1e6, rtt_s=0.01, max_logit_error=0.0)
    assert all(r.relative_l2_error == 0.0 for r in strict)


def test_timings_are_interleaved_after_a_warm_up_round_and_wait_for_the_device() -> None:
    from shared.planning import _interleaved_ms

    calls: list[str] = []
    samples = _interleaved_ms(
        [lambda: calls.append("head"), lambda: calls.append("tail")], 3, sync=lambda: calls.append("sync")
    )
    assert calls == ["head", "sync", "tail", "sync"] * 4  # NOTE: the first round is the warm-up
    assert [len(times) for times in samples] == [3, 3]


def test_runs_of_microseconds_are_timed_over_more_rounds() -> None:
    from shared.planning import _SHORT_ROUNDS, _rounds_ms

    def slow() -> None:
        time.sleep(0.002)

    samples = _rounds_ms([slow, lambda: None], 3)
    assert [len(times) for times in samples] == [3, 3 + _SHORT_ROUNDS * 3]


def test_the_spread_of_repeated_times_is_their_interquartile_range_over_the_median() -> None:
    from shared.planning import _spread

    assert _spread([10.0, 10.0, 10.0, 10.0, 10.0]) == 0.0
    assert _spread([8.0, 9.0, 10.0, 11.0, 12.0]) == pytest.approx(0.2)
    assert _spread([10.0, 10.0, 10.0, 10.0, 30.0]) == 0.0  # NOTE: one outlier of five does not make a spread
    assert _spread([0.08, 0.09, 0.1, 0.11, 0.12]) == 0.0  # NOTE: sub-millisecond times are noise-dominated


def test_the_profile_times_the_encodes_and_decodes_it_needs_anyway() -> None:
    from shared.planning import _timed_over

    calls: list[int] = []

    def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    outputs, median_ms = _timed_over(double, [5, 6, 7, 8], repeats=5)
    assert outputs == [10, 12, 14, 16]
    assert calls == [5, 6, 7, 8, 5, 6]  # a warm-up run, then five timed runs cycling through the inputs
    assert median_ms >= 0
    calls.clear()
    assert _timed_over(double, [1, 2, 3, 4, 5, 6, 7], repeats=2)[0] == [2, 4, 6, 8, 10, 12, 14]
    assert calls == [1, 2, 3, 4, 5, 6, 7]  # every input once, whatever the repeats


def _spin(cpu_ms: float) -> None:
    """Busy for ``cpu_ms`` of this process's CPU time."""
    import time

    until = time.process_time() + cpu_ms / 1000
    while time.process_time() < until:
        pass


def test_inside_a_cpu_quota_work_is_timed_as_its_cpu_time_over_the_quota() -> None:
    import time

    from shared.planning import _Stopwatch, _timed_over

    half_a_core = _Stopwatch(cpu_quota=0.5)
    # 5 ms of CPU fits in one period's quota when timed alone; a request running at half a core takes 10 ms
    _, spun_ms = _timed_over(_spin, [5.0], repeats=3, watch=half_a_core)
    assert spun_ms >= 10.0
    # waiting is not CPU: its wall time stands
    _, slept_ms = _timed_over(time.sleep, [0.02], repeats=3, watch=half_a_core)
    assert 20.0 <= slept_ms < 40.0
    # without a quota, wall time (3 ms of CPU takes 3 ms and more)
    _, wall_ms = _timed_over(_spin, [3.0], repeats=3)
    assert wall_ms >= 3.0


def test_a_cpu_quota_lengthens_every_profiled_time_and_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    import shared.planning

    loaded = load_model("tests.fixture_models:tiny_cnn", "none")
    images = [encode_image(synthetic_image())]
    free = profile_model(loaded, images, repeats=3, cpu_quota=None)
    capped = profile_model(loaded, images, repeats=3, cpu_quota=0.001)  # a thousandth of a core
    assert (free.cpu_quota, capped.cpu_quota) == (None, 0.001)
    assert capped.image_decode_ms > 10 * free.image_decode_ms
    assert capped.preprocess_ms > 10 * free.preprocess_ms
    for free_cut, capped_cut in zip(free.cuts, capped.cuts, strict=True):
        assert capped_cut.head_ms > 10 * free_cut.head_ms, capped_cut.name
        assert capped_cut.tail_ms > 10 * free_cut.tail_ms, capped_cut.name
        for free_codec, capped_codec in zip(free_cut.codecs, capped_cut.codecs, strict=True):
            assert capped_codec.encode_ms > 10 * free_codec.encode_ms, (capped_cut.name, capped_codec.codec)
            assert capped_codec.decode_ms > 10 * free_codec.decode_ms, (capped_cut.name, capped_codec.codec)
            assert capped_codec.bytes_per_image == free_codec.bytes_per_image
    # "detect" (the default) reads the quota of this process's cgroup
    monkeypatch.setattr(shared.planning, "cpu_quota_cores", lambda: 0.25)
    assert profile_model(loaded, images, repeats=1).cpu_quota == 0.25
    with pytest.raises(ValueError, match="positive"):
        profile_model(loaded, images, repeats=1, cpu_quota=0.0)


def test_monotone_pools_the_runs_that_break_the_order() -> None:
    from shared.planning import monotone

    assert monotone([1.0, 3.0, 2.0, 4.0], increasing=True) == [1.0, 2.5, 2.5, 4.0]
    assert monotone([5.0, 4.0, 4.5, 1.0], increasing=False) == [5.0, 4.25, 4.25, 1.0]
    assert monotone([3.0, 1.0, 1.0, 1.0], increasing=True) == [1.5, 1.5, 1.5, 1.5]
    assert monotone([1.0, 2.0, 2.0, 7.0], increasing=True) == [1.0, 2.0, 2.0, 7.0]
    assert monotone([], increasing=False) == []


def test_monotone_keeps_tied_values_equal_and_weighs_each_tied_run_by_its_length() -> None:
    from shared.planning import monotone

    assert monotone([1.0, 2.0, 4.0], increasing=True, tied=[False, False, True]) == [1.0, 3.0, 3.0]
    # NOTE: the tied run (1, 13) counts as 7 twice, so 5 stays alone (pooling 5 with 1 first would give 6.33)
    assert monotone([5.0, 1.0, 13.0], increasing=True, tied=[False, False, True]) == [5.0, 7.0, 7.0]
    assert monotone([4.0, 6.0, 1.0], increasing=False, tied=[False, True, False]) == [5.0, 5.0, 1.0]
    assert monotone([2.0, 9.0, 1.0], increasing=True, tied=[False, True, False]) == [4.0, 4.0, 4.0]


def _ordered_times(fns: Sequence[object], *args: Any, **kwargs: Any) -> list[list[float]]:
    """Stands in for ``shared.planning._rounds_ms``: cut ``i`` of ``n`` gets head ``i + 1`` ms and tail ``n - i``
    ms (heads grow, tails shrink, as in a model), so a test's changes to them are all that is out of order."""
    cuts = len(fns) // 2
    return [[float(i + 1) if kind == 0 else float(cuts - i)] for i in range(cuts) for kind in (0, 1)]


def test_a_profile_s_heads_grow_and_tails_shrink_along_the_cuts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Noise that inverts two cuts a cheap node apart (add_1's tail measured below layer1's, although it
    runs layer1's tail and a ReLU more) is pooled: a later cut's head runs an earlier one's and more."""
    import shared.planning

    def inverted(*args: Any, **kwargs: Any) -> list[list[float]]:
        times = _ordered_times(*args, **kwargs)
        heads, tails = times[0::2], times[1::2]
        heads[1], heads[2] = [t * 10 for t in heads[2]], heads[1]  # NOTE: cut 1's head "slower" than cut 2's
        tails[1], tails[2] = tails[2], [t * 10 for t in tails[1]]  # NOTE: cut 2's tail "slower" than cut 1's
        return [t for pair in zip(heads, tails, strict=True) for t in pair]

    monkeypatch.setattr(shared.planning, "_rounds_ms", inverted)
    loaded = load_model("tests.fixture_models:tiny_cnn", "none")
    profile = profile_model(loaded, [encode_image(synthetic_image())], repeats=1)
    assert [c.index for c in profile.cuts] == sorted(c.index for c in profile.cuts)
    heads, tails = [c.head_ms for c in profile.cuts], [c.tail_ms for c in profile.cuts]
    assert heads == sorted(heads) and tails == sorted(tails, reverse=True)
    assert heads[1] == heads[2] and tails[1] == tails[2]  # NOTE: the inverted pair, pooled


def test_cuts_that_carry_the_same_values_get_the_same_times(monkeypatch: pytest.MonkeyPatch) -> None:
    """tiny_cnn's ``mean`` and ``flatten`` carry the same 8 values (a flatten apart): measured apart, their
    times differ only by noise, and a profile gives both the mean of the two. Cuts that carry other values
    (``relu_1`` before them) keep their own."""
    import shared.planning

    loaded = load_model("tests.fixture_models:tiny_cnn", "none")
    names = [cut.name for cut in loaded.graph().single_tensor_cuts()]
    mean, flatten = names.index("mean"), names.index("flatten")

    def apart(*args: Any, **kwargs: Any) -> list[list[float]]:
        times = _ordered_times(*args, **kwargs)
        # NOTE: still in order (a later head longer, a later tail shorter), so monotone alone keeps them
        times[2 * flatten] = [t + 4 for t in times[2 * mean]]
        times[2 * mean + 1] = [t + 4 for t in times[2 * flatten + 1]]
        return times

    monkeypatch.setattr(shared.planning, "_rounds_ms", apart)
    profile = profile_model(loaded, [encode_image(synthetic_image())], repeats=1)
    by_name = {cut.name: cut for cut in profile.cuts}
    assert by_name["mean"].head_ms == by_name["flatten"].head_ms == mean + 1 + 2
    assert by_name["mean"].tail_ms == by_name["flatten"].tail_ms == len(names) - flatten + 2
    assert by_name["relu_1"].head_ms == mean and by_name["output"].head_ms == len(names)  # NOTE: not pooled


def test_a_profile_the_library_makes_on_its_own_pictures_records_them_as_generated(tmp_path: Path) -> None:
    """Without images, profile_model measures on pictures it generates and says so, as `splitinfer profile`
    without --images does: the planner counts their errors GENERATED_ERROR_FACTOR times either way."""
    from shared.planning import GENERATED_ERROR_FACTOR, GENERATED_IMAGES
    from splitinfer.bench import bench_images

    loaded = load_model("tests.fixture_models:tiny_cnn", "none")
    generated = profile_model(loaded, repeats=1)
    assert generated.images == GENERATED_IMAGES
    assert generated.error_factor == GENERATED_ERROR_FACTOR
    from shared.planning import GENERATED_PROFILE_IMAGES

    # NOTE: the same pictures as the CLI's default (sizes are means over the images: equal means the same)
    cli_default = profile_model(loaded, bench_images(None, GENERATED_PROFILE_IMAGES), repeats=1)
    assert [c.bytes_per_image for c in generated.cuts[0].codecs] == [
        c.bytes_per_image for c in cli_default.cuts[0].codecs
    ]
    assert cli_default.images == "" and cli_default.error_factor == 1.0  # images given, their source unsaid
    photos = profile_model(loaded, [encode_image(synthetic_image(seed=3))], images_source="photos/", repeats=1)
    assert (photos.images, photos.error_factor) == ("photos/", 1.0)
    path = tmp_path / "generated.json"
    generated.save(path)
    assert Profile.load(path).error_factor == GENERATED_ERROR_FACTOR
    with pytest.raises(ValueError, match="none were given"):
        profile_model(loaded, images_source="photos/", repeats=1)


def test_an_older_profile_without_an_images_field_loads_and_counts_once(tmp_path: Path) -> None:
    data = EDGE.to_json()
    del data["images"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = Profile.load(tmp_path / "old.json")
    assert (old.images, old.error_factor) == ("", 1.0)


@pytest.mark.parametrize(
    "text",
    [
        "{",
        "[" * 100_000 + "]" * 100_000,
        "[]",
        '"a string"',
        '{"x": ' + "9" * 100_000 + "}",
        "\xff\xfe not UTF-8",
    ],
    ids=["truncated JSON", "nested 100000 deep", "a list", "a string", "a 100000-digit number", "not UTF-8"],
)
def test_a_hostile_profile_file_is_a_value_error_naming_it(tmp_path: Path, text: str) -> None:
    """A profile someone handed you: one line naming the file (the services and the CLI print it), never a
    RecursionError's traceback."""
    path = tmp_path / "profile.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError, match=r"profile\.json is not a profile .* `splitinfer profile`"):
        Profile.load(path)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0], ids=["NaN", "Infinity", "negative"])
def test_a_profile_with_times_or_sizes_that_are_not_finite_and_non_negative_is_refused(
    tmp_path: Path, value: float
) -> None:
    data = EDGE.to_json()
    data["cuts"][1]["head_ms"] = value
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"profile\.json is not a profile .*head_ms"):
        Profile.load(path)


def test_a_profile_file_too_large_to_be_one_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "profile.json"
    with path.open("wb") as file:
        file.truncate(3 * 1024**3)  # NOTE: sparse: 3 GiB of zeros that take no disk
    with pytest.raises(ValueError, match=r"profile\.json is over"):
        Profile.load(path)
