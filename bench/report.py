"""Write docs/benchmarks.md from bench/results/*.json (run after bench/cpu_suite.py or bench/gpu.sh)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from splitinfer.loadgen import markdown_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench/results"
DOC = ROOT / "docs/benchmarks.md"

LATENCY_COLUMNS = [
    ("name", "configuration"),
    ("requests", "requests"),
    ("p50_ms", "p50 ms"),
    ("p95_ms", "p95 ms"),
    ("p50_vs_in_process", "p50 / in-process"),
    ("payload_bytes_per_request", "bytes to cloud"),
]
BATCH_COLUMNS = [
    ("name", "cloud"),
    ("requests", "requests"),
    ("errors", "errors"),
    ("throughput_img_s", "img/s"),
    ("throughput_vs_unbatched", "vs max_batch=1"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
]


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def cpu_section(data: dict[str, Any]) -> list[str]:
    m = data["machine"]
    lines = [
        "## CPU",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; Python {m['python']}, torch {m['torch']}; "
        f"`GOMP_SPINCOUNT={m.get('GOMP_SPINCOUNT', '')}` for every process. {m['date']}.",
        f"Command: `{data['command']}` then `python bench/report.py`. Raw numbers: `bench/results/cpu.json`.",
        "",
        "Edge, cloud and load generator share the machine's 2 cores; each service runs torch with 2 threads.",
        "libgomp's idle threads spin after each parallel region and would steal the core another process is",
        "computing on, which only happens because everything shares one small machine; so every process of",
        "the run, the in-process baseline included, runs with `GOMP_SPINCOUNT=0` (no spinning).",
        "Images: 8 generated 640x480 JPEGs (q=90, ~35 KB). Random weights (seed 0).",
        "",
        "### Latency at concurrency 1",
        "",
        "All configurations run side by side (one edge process per cut, one cloud) and every round sends one",
        "image to each in a shuffled order, so drift of this shared VM hits them alike. (a) is decode +",
        "preprocess + full forward in the benchmark process itself; (b) cut `input` ships the JPEG; (c) cut",
        "`output` computes everything on the edge (no cloud call). The split rows include the HTTP hop from",
        "the client to the edge and from the edge to the cloud, encoding, decoding and both halves of the model.",
        "",
    ]
    for model in dict.fromkeys(row["model"] for row in data["latency"]):
        rows = [row for row in data["latency"] if row["model"] == model]
        lines += [f"**{model}**", "", markdown_table(rows, LATENCY_COLUMNS), ""]
    target = next(r for r in data["latency"] if r["name"] == "resnet18 layer3 fp16")
    lines += [
        f"Loopback overhead, resnet18 `layer3` `fp16`: {target['p50_vs_in_process']:.2f}x the in-process p50 "
        f"(target <= 1.3x): {_verdict(target['p50_vs_in_process'] <= 1.3)}.",
        "",
        "### Dynamic batching at concurrency 32",
        "",
        "32 clients post resnet18 `layer2` `fp16` payloads (one image each) straight to `/v1/tail` of a",
        "cloud started with the settings shown; 20 s each after a 3 s warm-up.",
        "",
        markdown_table(data["batching"], BATCH_COLUMNS),
        "",
    ]
    unbatched = data["batching"][0]["throughput_img_s"]
    default = next(r for r in data["batching"] if r["max_batch_size"] == 32 and r["max_delay_ms"] == 2.0)
    ratio = default["throughput_img_s"] / unbatched if unbatched else 0.0
    lines += [
        f"Batching pays: the default (max_batch_size=32, max_delay_ms=2) serves {ratio:.2f}x the images of "
        f"max_batch_size=1 (target >= 1.5x): {_verdict(ratio >= 1.5)}.",
        "",
    ]
    soak = data["soak"]
    edge_growth, cloud_growth = soak["edge_rss_growth"], soak["cloud_rss_growth"]
    lines += [
        "### Soak at concurrency 64",
        "",
        f"64 clients through edge (`layer3`, `fp16`) and cloud for {soak['duration_s']:.0f} s: "
        f"{soak['requests']} requests, {soak['errors']} errors, {soak['throughput_img_s']:.1f} img/s, "
        f"p50 {soak['p50_ms']:.0f} ms, p99 {soak['p99_ms']:.0f} ms.",
        f"Resident memory from 20 s in to the end: edge {soak['edge_rss_mib'][0]} -> {soak['edge_rss_mib'][1]} MiB "
        f"({edge_growth:+.1%}), cloud {soak['cloud_rss_mib'][0]} -> {soak['cloud_rss_mib'][1]} MiB "
        f"({cloud_growth:+.1%}).",
        f"No errors and no unbounded growth: "
        f"{_verdict(soak['errors'] == 0 and max(edge_growth, cloud_growth) < 0.10)}.",
        "",
    ]
    return lines


def soak_section(data: dict[str, Any]) -> list[str]:
    soak = data["soak"]
    growth = max(soak["edge_rss_growth"], soak["cloud_rss_growth"])
    return [
        "## Reliability soak",
        "",
        f"Command: `{data['command']}` ({data['machine']['date']}, same machine). 16 clients send "
        f"{soak['requests'] + soak['errors']:,} requests through edge and cloud serving "
        "`tests.fixture_models:tiny_cnn` (a tiny CNN, so the run exercises HTTP, the wire format, batching "
        "and memory rather than convolutions), cut `block`, `fp16`.",
        "",
        f"{soak['requests']:,} succeeded, {soak['errors']} errors, {soak['throughput_img_s']:.1f} req/s, "
        f"p50 {soak['p50_ms']:.0f} ms, p99 {soak['p99_ms']:.0f} ms. Resident memory from 20 s in to the end: "
        f"edge {soak['edge_rss_mib'][0]} -> {soak['edge_rss_mib'][1]} MiB ({soak['edge_rss_growth']:+.1%}), "
        f"cloud {soak['cloud_rss_mib'][0]} -> {soak['cloud_rss_mib'][1]} MiB ({soak['cloud_rss_growth']:+.1%}).",
        "",
        f"20,000 requests, zero errors, growth under 10%: "
        f"{_verdict(soak['errors'] == 0 and soak['requests'] >= 20_000 and growth < 0.10)}.",
        "",
    ]


def gpu_section() -> list[str]:
    path = RESULTS / "gpu.json"
    lines = ["## GPU", ""]
    if not path.exists():
        return [
            *lines,
            "`bench/gpu.sh` starts the cloud on a CUDA GPU and drives it with several load-generator processes,",
            "with and without batching. It has not been run yet: no GPU machine was available to the sessions",
            "that produced these results. Target: batching >= 10x the throughput of max_batch_size=1.",
            "",
        ]
    data = json.loads(path.read_text())
    machine = (RESULTS / "gpu-machine.txt").read_text().strip() if (RESULTS / "gpu-machine.txt").exists() else ""
    return [
        *lines,
        f"Machine: {machine}. Command: `bash bench/gpu.sh`.",
        "",
        "| cloud | img/s | p50 ms | errors |",
        "|---|---|---|---|",
        f"| max_batch_size=1 | {data['unbatched']['throughput_img_s']} | {data['unbatched']['p50_ms']} | "
        f"{data['unbatched']['errors']} |",
        f"| max_batch_size=256 | {data['batched']['throughput_img_s']} | {data['batched']['p50_ms']} | "
        f"{data['batched']['errors']} |",
        "",
        f"Ratio: {data['ratio']}x (target >= 10x): {_verdict(data['ratio'] >= 10)}.",
        "",
    ]


def main() -> None:
    lines = [
        "# Benchmarks",
        "",
        "Every number below comes from one run of the named command; ratios compare rows of the same run.",
        "The tables are generated by `bench/report.py`; do not edit them by hand.",
        "",
    ]
    cpu = RESULTS / "cpu.json"
    if cpu.exists():
        lines += cpu_section(json.loads(cpu.read_text()))
    soak = RESULTS / "soak.json"
    if soak.exists():
        lines += soak_section(json.loads(soak.read_text()))
    lines += gpu_section()
    DOC.write_text("\n".join(lines))
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
