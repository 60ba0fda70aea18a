"""The README's benchmark highlights say what docs/benchmarks.md (rendered from bench/results) says."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
BENCHMARKS = (ROOT / "docs" / "benchmarks.md").read_text()
RESULTS = ROOT / "bench" / "results"
HIGHLIGHTS = README[README.index("## Benchmarks") : README.index("`splitinfer bench` is the load generator")]


def _one(pattern: str, text: str) -> str:
    found = re.findall(pattern, text, flags=re.S)
    assert len(found) == 1, (pattern, found)
    return str(found[0])


@pytest.mark.parametrize(
    ("claim", "readme", "benchmarks"),
    [
        (
            "loopback overhead",
            r"with default settings \(([\d.]+)x; target",
            r"End to end / in-process: \*\*([\d.]+)x\*\*",
        ),
        (
            "cloud vs comparator",
            r"access log on\), [\d,]+\s+\(([\d.]+)x the comparator",
            r"Cloud / comparator: \*\*([\d.]+)x\*\*",
        ),
        ("two workers", r"`--workers 2` serves ([\d.]+)x one process", r"2 workers / 1: \*\*([\d.]+)x\*\*"),
        ("profile", r"resnet18 with torch's default threads: ([\d.]+) s wall", r"-o profile.json`: \*\*([\d.]+) s\*\*"),
        (
            "peer c=1",
            r"\(exact\) our p50 at\s+concurrency 1 is ([\d.]+)x the peer's",
            r"\| this project, ONNX Runtime \|.*?\| ([\d.]+)x \|",
        ),
        ("end to end p50", r"\): ([\d.]+) ms p50\s+end to end", r"\| end to end \(client\) \| ([\d.]+) \|\n"),
        (
            "in-process p50",
            r"end to end against ([\d.]+) ms for the whole model",
            r"\| in-process \(default settings\) \| ([\d.]+) \|",
        ),
        ("overhead", r"tail compute\) is ([\d.]+) ms median", r"framework overhead \*\*([\d.]+) ms\*\* median"),
        (
            "overhead beyond decode",
            r"ms median, ([\d.]+) ms of it beyond",
            r"\| overhead without decode \+ preprocess \| ([\d.]+) \|\n",
        ),
        (
            "minimal split overhead",
            r"same rounds\) measured\s+([\d.]+) ms",
            r"\| overhead: end to end - head - tail \| [\d.]+ \| ([\d.]+) \|",
        ),
        (
            "minimal split beyond decode",
            r"measured\s+[\d.]+ ms \(([\d.]+) ms beyond",
            r"\| overhead without decode \+ preprocess \| [\d.]+ \| ([\d.]+) \|",
        ),
        (
            "minimal split p50",
            r"beyond decode and preprocess\) and ([\d.]+) ms end to end",
            r"\| end to end \(client\) \| [\d.]+ \| ([\d.]+) \|",
        ),
        ("cloud requests/s", r"the cloud serves ([\d,]+) requests/s", r"\| cloud service, 1 process \| ([\d,]+) \|"),
        ("comparator requests/s", r"access log on\), ([\d,]+)\s+\(", r"\| minimal Starlette comparator \| ([\d,]+) \|"),
        ("batching", r"Dynamic batching: ([\d.]+)x the throughput", r"max_delay_ms=2\) serves ([\d.]+)x the images"),
        ("prediction error", r"predicted latency within ([\d.]+)% of", r"three links: ([\d.]+)% with the live"),
        ("auto", r"`auto` at most ([\d.]+)x the better of", r"`auto` measures at most ([\d.]+)x the better"),
        ("ray replicas", r"two replicas of the cloud serve ([\d.]+)x", r"Two replicas: ([\d.]+)x the throughput"),
    ],
)  # fmt: skip
def test_a_highlight_matches_the_benchmarks(claim: str, readme: str, benchmarks: str) -> None:
    assert _one(readme, HIGHLIGHTS) == _one(benchmarks, BENCHMARKS), claim


def test_the_switch_time_is_the_slowest_measured() -> None:
    moved = [float(s) for s in re.findall(r"\| ([\d.]+) s \| \d+ \| \d+ \|", BENCHMARKS)]
    assert len(moved) >= 2
    assert float(_one(r"moves its cut within\s+([\d.]+) s", HIGHLIGHTS)) == max(moved)


def test_the_ray_throughputs_match() -> None:
    two, one = _one(r"\(([\d.]+ vs [\d.]+) img/s", HIGHLIGHTS).split(" vs ")
    assert f"| 2 | {two} |" in BENCHMARKS
    assert f"| 1 | {one} |" in BENCHMARKS


def test_soak_growth_is_under_the_stated_bound() -> None:
    bound = float(_one(r"grew under ([\d.]+)% after warm-up", HIGHLIGHTS))
    soak = BENCHMARKS[BENCHMARKS.index("### Soak at concurrency 64") : BENCHMARKS.index("## Reliability soak")]
    growths = [float(g) for g in re.findall(r"\(\+([\d.]+)%\)", soak)]
    assert growths and max(growths) < bound
    assert "0 errors" in soak


def _result(name: str) -> Any:
    return json.loads((RESULTS / name).read_text())


def _bullet(start: str) -> str:
    """The highlight bullet whose text contains ``start`` (up to the next bullet)."""
    return next(b for b in re.split(r"\n(?=- )", HIGHLIGHTS) if start in b)


def _number(pattern: str, text: str = HIGHLIGHTS) -> float:
    return float(_one(pattern, text).replace(",", ""))


def test_the_loopback_highlight_is_the_overhead_run() -> None:
    """Every number of the loopback, comparator and profile highlights, against bench/results/overhead.json."""
    run = _result("overhead.json")
    e, t, p = run["end_to_end"], run["throughput"]["median_requests_s"], run["profile"]
    m = e["minimal_split"]
    claims = {
        r"([\d.]+) ms p50\s+end to end against": e["end_to_end_p50_ms"],
        r"against ([\d.]+) ms for the whole model": e["in_process_p50_ms"],
        r"head and tail compute\) is ([\d.]+) ms median": e["overhead_p50_ms"],
        r"median, ([\d.]+) ms of it beyond decode": e["overhead_without_decode_preprocess_p50_ms"],
        r"same rounds\) measured\s+([\d.]+) ms \(": m["overhead_p50_ms"],
        r"ms \(([\d.]+) ms beyond decode and preprocess\) and": m["overhead_without_decode_preprocess_p50_ms"],
        r"preprocess\) and ([\d.]+) ms end to end: the target": m["end_to_end_p50_ms"],
        r"the cloud serves ([\d,]+) requests/s": t["cloud service, 1 process"],
        r"access log on\), ([\d,]+)\s+\(": t["minimal Starlette comparator"],
        r"when the whole model took ([\d.]+) ms": p["whole_model_ms"],
        r"`add_1`'s tail ([\d.]+)x `layer1`'s": p["pairs"]["add_1 / layer1"]["tail"],
        r"`add_7`'s ([\d.]+)x\s+`layer4`'s": p["pairs"]["add_7 / layer4"]["tail"],
    }
    for pattern, value in claims.items():
        shown = _one(pattern, HIGHLIGHTS)
        decimals = len(shown.partition(".")[2])
        assert float(shown.replace(",", "")) == round(value, decimals), (pattern, shown, value)


def test_the_peer_highlight_is_the_peer_run() -> None:
    """The peer bullet's four ratios against bench/results/peer_onnx.json, its thread setting named, and bf16's
    fidelity against bench/results/openvino_bf16.json (a different model: the bullet must say so)."""
    run = _result("peer_onnx.json")
    bullet = _bullet("A.EdgeAI-Split-Computing")
    ratios = run["ratios"]
    claims = {
        r"our p50 at\s+concurrency 1 is ([\d.]+)x the peer's": ratios["ours"]["p50_at_1_over_peer"],
        r"requests/s at concurrency 8 ([\d.]+)x \(target": ratios["ours"]["rps_at_8_over_peer"],
        r"OpenVINO f32 ([\d.]+)x and": ratios["ours-openvino"]["p50_at_1_over_peer"],
        r"OpenVINO f32 [\d.]+x and ([\d.]+)x": ratios["ours-openvino"]["rps_at_8_over_peer"],
    }
    if "ours-openvino-bf16" in ratios:
        claims[r"our bf16 p50 at concurrency 1 is ([\d.]+)x"] = ratios["ours-openvino-bf16"]["p50_at_1_over_peer"]
        claims[r"bf16 requests/s at concurrency 8 ([\d.]+)x"] = ratios["ours-openvino-bf16"]["rps_at_8_over_peer"]
    else:
        assert "OpenVINO bf16 was not measured in this run" in bullet
    for pattern, value in claims.items():
        assert _number(pattern, bullet) == round(value, 2), pattern
    threads = run.get("threads", "one")
    assert f"--threads {threads}" in bullet
    if threads == "one":
        assert "peer tuned away from its defaults" in bullet
    bf16 = next(r for r in _result("openvino_bf16.json")["agreement_with_torch_fp32"] if r["engine"] == "openvino bf16")
    kept = _number(r"top-1 on (\d+) of \d+ real photos", bullet)
    photos = _number(r"top-1 on \d+ of (\d+) real photos", bullet)
    assert (kept, photos) == (bf16["top1_agreement"], bf16["images"])
    assert "measured on another model" in bullet


def test_the_emulated_link_errors_are_the_netlink_run() -> None:
    summary = _result("netlink.json")["summary"]
    bullet = _bullet("Emulated links")
    assert _number(r"predicted latency within ([\d.]+)% of", bullet) == round(
        100 * summary["median_prediction_error"], 1
    )
    assert _number(r"out of\s+sample, ([\d.]+)%", bullet) == round(100 * summary["median_profile_only_error"], 1)
    links = _result("netlink.json")["models"].values()
    if not all("live_model_read" in link for result in links for link in result["links"]):
        assert "in sample" in bullet


@pytest.mark.parametrize(
    ("anchor", "dates"),
    [
        ("as `splitinfer up` starts them", lambda: [_result("overhead.json")["date"]]),
        ("Dynamic batching", lambda: [_result("cpu.json")["machine"]["date"]]),
        ("Emulated links", lambda: re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d", _result("netlink.json")["date"])),
        ("Ray Serve", lambda: [_result("ray.json")["date"]]),
        ("A.EdgeAI-Split-Computing", lambda: [_result("peer_onnx.json")["when"]]),
    ],
)
def test_a_highlight_names_the_run_it_comes_from(anchor: str, dates: Any) -> None:
    """Each highlight says when its numbers were measured, and that is its results file's date: a re-run
    that changes the numbers but not the date, or a highlight left from an older run, fails here."""
    bullet = _bullet(anchor)
    stated = re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d", bullet)
    days = {d.split()[0] for d in re.findall(r"\d{4}-\d\d-\d\d", bullet)}
    times = re.findall(r"\b\d\d:\d\d\b", bullet)
    expected = [d.removesuffix(" UTC") for d in dates()]
    assert stated or (days and times), anchor
    assert {d.split()[0] for d in expected} <= days, (anchor, expected)
    assert {d.split()[1] for d in expected} <= set(times), (anchor, expected)


def test_the_codec_fidelity_tables_are_the_committed_output() -> None:
    """Every row of README's real-weights codec tables is a row of bench/results/fidelity_lite0.txt."""
    section = README[README.index("### Codec fidelity, EfficientNet-Lite0") : README.index("## Choosing the cut")]
    raw = (RESULTS / "fidelity_lite0.txt").read_text().splitlines()
    rows = [line for block in re.findall(r"```\n(.*?)```", section, flags=re.S) for line in block.splitlines()]
    rows = [line for line in rows if line.startswith("│")]
    assert len(rows) >= 30
    assert [row for row in rows if row not in raw] == []


def test_the_auto_section_labels_its_prediction_error() -> None:
    """README's "--cut auto" section repeats the emulated-link prediction error: with the same label."""
    summary = _result("netlink.json")["summary"]
    section = README[README.index("How well this works on emulated links") : README.index("## ONNX Runtime and")]
    assert _number(r"predictions are within ([\d.]+)% of", section) == round(100 * summary["median_prediction_error"])
    assert _number(r"nominal link alone, ([\d.]+)%", section) == round(100 * summary["median_profile_only_error"], 1)
    assert "in sample" in section


def _section(text: str, start: str, end: str) -> str:
    return text[text.index(start) : text.index(end, text.index(start))]


def test_the_thread_settings_numbers_are_the_openmp_benchmarks() -> None:
    """README's "Threads" paragraph quotes bench/openmp_teams.py's table (docs/benchmarks.md)."""
    teams = _section(BENCHMARKS, "<!-- begin openmp-teams", "<!-- end openmp-teams")
    paragraph = _section(README, "resnet18's head took", "`SPLITINFER_THREADS`,")
    kept, ended = _one(r"head took ([\d.]+ ms instead of [\d.]+) ms", paragraph).split(" ms instead of ")
    assert f"| loader kept alive (before) | {kept} |" in teams and f"| loader ended (as served) | {ended} |" in teams
    spin, passive, default = re.findall(r"([\d.]+) ms", _section(paragraph, "answered in", "(its idle"))
    assert f"| GOMP_SPINCOUNT=10000 (up's default) | {spin} |" in teams
    assert f"| OMP_WAIT_POLICY=PASSIVE | {passive} |" in teams
    assert f"| GNU OpenMP's default | {default} |" in teams
    default_tail, spin_tail = _one(r"tail: ([\d.]+ ms against [\d.]+) ms", paragraph).split(" ms against ")
    assert re.search(rf"\| GNU OpenMP's default \|.*\| {default_tail} \|", teams)
    assert re.search(rf"\| GOMP_SPINCOUNT=10000 \(up's default\) \|.*\| {spin_tail} \|", teams)


def test_the_tls_costs_are_the_tls_benchmarks() -> None:
    tls = _section(BENCHMARKS, "<!-- begin tls_loop", "<!-- end tls_loop")
    own, plain = re.findall(
        r"([\d.]+)x", _one(r"costs ([\d.]+x the requests/s of uvicorn's own TLS.*?[\d.]+x)", README)
    )
    assert f"HTTPS on asyncio / HTTPS on uvloop (uvicorn's TLS): **{own}x**" in tls
    assert f"HTTPS on asyncio / HTTP on uvloop: **{plain}x**" in tls
