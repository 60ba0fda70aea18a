"""The README's benchmark highlights say what docs/benchmarks.md (rendered from bench/results) says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
BENCHMARKS = (ROOT / "docs" / "benchmarks.md").read_text()
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
        ("cloud vs comparator", r"logs [\d,]+ \(([\d.]+)x the comparator", r"Cloud / comparator: \*\*([\d.]+)x\*\*"),
        ("two workers", r"`--workers 2` serves ([\d.]+)x one process", r"2 workers / 1: \*\*([\d.]+)x\*\*"),
        ("profile", r"resnet18 with torch's default threads: ([\d.]+) s wall", r"-o profile.json`: \*\*([\d.]+) s\*\*"),
        (
            "peer c=1",
            r"\(exact\) our p50 at\s+concurrency 1 is ([\d.]+)x the peer's",
            r"\| this project, ONNX Runtime \|.*?\| ([\d.]+)x \|",
        ),
        (
            "peer bf16 c=1",
            r"bf16 p50 at concurrency 1 is ([\d.]+)x",
            r"\| this project, OpenVINO \*\*bf16 \(not exact\)\*\* \|.*?\| ([\d.]+)x \|",
        ),
        (
            "peer bf16 c=8",
            r"bf16 requests/s at concurrency 8 ([\d.]+)x",
            r"\| this project, OpenVINO \*\*bf16 \(not exact\)\*\* \|.*?\| [\d.]+x \| ([\d.]+)x \|",
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
        ("comparator requests/s", r"metrics or logs ([\d,]+) \(", r"\| minimal Starlette comparator \| ([\d,]+) \|"),
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
