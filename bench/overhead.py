"""Per-request overhead, side by side in one run (docs/benchmarks.md, "Per-request overhead").

    PYTHONPATH=. .venv/bin/python bench/overhead.py              # about 4 minutes on 2 cores
    PYTHONPATH=. .venv/bin/python bench/overhead.py --quick      # a smoke run

1. Throughput of the HTTP path, with one load generator (``wrk -t1 -c32 -d10s``) POSTing the same resnet18
   ``avgpool`` fp32 payload (the tail is one linear layer): the cloud service (one process, one torch
   thread, access log and metrics on), ``--workers 2`` of it, and a minimal Starlette app that reads
   the body, loads it with safetensors, runs the same ``fc`` (one torch thread) and saves the logits
   (bench/minimal_tail.py, under uvicorn's defaults: its access log on). Rounds alternate between the
   three servers.
2. Loopback end to end at concurrency 1: edge and cloud started as ``splitinfer up`` starts them (every
   core each, ``GOMP_SPINCOUNT=10000``: ``splitinfer.threads.pair_threads_env``), resnet18 cut at
   ``layer3`` with ``fp16``, real photos
   (skimage.data), against the in-process baseline (decode + preprocess + the whole model) measured by
   ``splitinfer bench --target local`` in a process of its own with default settings; rounds
   alternate. The framework's own overhead is each request's end-to-end time minus the head and
   tail compute the services report for it (and, in a second column, minus decode and preprocess too:
   the work the in-process path also does).

3. ``splitinfer profile`` of resnet18 on this CPU: its wall time and how closely cuts a cheap node apart agree.

Writes bench/results/overhead.json and its table into docs/benchmarks.md (between the ``overhead`` markers).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import safetensors.torch
import torch

from bench.doc_section import write_section
from bench.photos import real_photos
from bench.wrk import load_average, wrk_post
from shared.models import load_model
from shared.wire import MEDIA_TYPE
from splitinfer.bench import cloud_payloads, local_baseline_process
from splitinfer.processes import free_port, start_service, wait_until
from splitinfer.samples import encode_image, synthetic_image
from splitinfer.threads import THREADS_ENV, pair_threads_env

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "overhead.json"


def _start_uvicorn(
    factory: str, logs: Path, ready: Callable[[str], object], env: Mapping[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """``uvicorn --factory FACTORY`` on a free port (uvicorn's defaults otherwise), once ``ready(url)`` passes."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "--factory", factory, "--port", str(port)]
    name = factory.rsplit(":", 1)[1]
    with (logs / f"{name}.log").open("wb") as sink:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            ready(url)
            return process, url
        except (httpx.TransportError, ConnectionError):
            time.sleep(0.3)
    process.terminate()
    raise TimeoutError(f"{factory} did not start")


def _start_comparator(logs: Path) -> tuple[subprocess.Popen[bytes], str]:
    body = safetensors.torch.save({"x": torch.zeros(1, 512, 1, 1)})
    return _start_uvicorn(
        "bench.minimal_tail:create_app", logs, lambda url: httpx.post(url + "/tail", content=body, timeout=5)
    )


def _start_minimal_split(logs: Path, env: Mapping[str, str], probe: bytes) -> tuple[list[subprocess.Popen[bytes]], str]:
    """bench/minimal_split.py's cloud and edge (the floor of two HTTP processes), with the services' env."""
    cloud, cloud_url = _start_uvicorn(
        "bench.minimal_split:create_cloud", logs, lambda url: httpx.get(url + "/", timeout=5), env
    )
    try:
        edge, edge_url = _start_uvicorn(
            "bench.minimal_split:create_edge",
            logs,
            lambda url: _LeanClient(url).classify(probe),
            {**env, "MINIMAL_CLOUD_URL": cloud_url},
        )
    except BaseException:
        cloud.terminate()
        raise
    return [edge, cloud], edge_url


def throughput_section(logs: Path, scratch: Path, rounds: int, duration_s: int) -> dict[str, Any]:
    loaded = load_model("resnet18", "none")
    wire = cloud_payloads(loaded, "avgpool", "fp32", [encode_image(synthetic_image())])[0]
    features = torch.rand(1, 512, 1, 1, generator=torch.Generator().manual_seed(0))  # avgpool's output shape
    minimal = safetensors.torch.save({"x": features})
    common = ["--model", "resnet18", "--weights", "none", "--threads", "1"]
    one = start_service("cloud", common, logs)
    two = start_service("cloud", [*common, "--workers", "2"], logs)
    comparator, comparator_url = _start_comparator(logs)
    servers: dict[str, tuple[str, bytes, str, int]] = {
        "minimal Starlette comparator": (comparator_url + "/tail", minimal, "application/octet-stream", comparator.pid),
        "cloud service, 1 process": (one.url + "/v1/tail", wire, MEDIA_TYPE, one.process.pid),
        "cloud service, --workers 2": (two.url + "/v1/tail", wire, MEDIA_TYPE, two.process.pid),
    }
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    try:
        for service in (one, two):
            wait_until(service)
        _wait_for_workers(two.url + "/v1/tail", wire)
        for url, body, media_type, _ in servers.values():  # NOTE: warm-up, not recorded
            wrk_post(url, body, media_type, scratch, 2)
        for round_index in range(rounds):
            order = list(servers) if round_index % 2 == 0 else list(reversed(servers))
            for name in order:
                url, body, media_type, pid = servers[name]
                run = wrk_post(url, body, media_type, scratch, duration_s, server_pid=pid)
                samples[name].append(run | {"load": load_average()})
                print(f"  round {round_index + 1} {name:32s} {samples[name][-1]['requests_s']:9.1f} req/s", flush=True)
    finally:
        for service in (one, two):
            service.stop()
        comparator.terminate()
        comparator.wait(30)
    rates = {name: statistics.median(s["requests_s"] for s in runs) for name, runs in samples.items()}
    cloud, cloud2 = rates["cloud service, 1 process"], rates["cloud service, --workers 2"]
    return {
        "load_generator": f"wrk -t1 -c32 -d{duration_s}s --latency, POST",
        "payload_bytes": {"cloud": len(wire), "comparator": len(minimal)},
        "rounds": rounds,
        "runs": samples,
        "median_requests_s": rates,
        "cloud_vs_comparator": round(cloud / rates["minimal Starlette comparator"], 3),
        "two_workers_vs_one": round(cloud2 / cloud, 3),
    }


def _wait_for_workers(url: str, body: bytes, workers: int = 2, timeout_s: float = 120) -> None:
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while len(seen) < workers and time.monotonic() < deadline:
        response = httpx.post(url, content=body, headers={"content-type": MEDIA_TYPE}, timeout=30)
        seen.add(response.headers.get("x-served-by", ""))
    if len(seen) < workers:
        raise TimeoutError(f"only {len(seen)} of {workers} workers answered")


def _photos(folder: Path) -> list[bytes]:
    blobs = []
    for index, (_, image) in enumerate(real_photos(crops_per_photo=0)):
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=90)
        blobs.append(buffer.getvalue())
        (folder / f"{index:02d}.jpg").write_bytes(buffer.getvalue())
    return blobs


class _LeanClient:
    """POSTs one image to the edge over one kept-alive connection with the standard library's client, so
    that the client's own cost (httpx's is over 1 ms of CPU a request) is not counted as the framework's."""

    _BOUNDARY = "splitinfer-bench-boundary"

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self._connection = http.client.HTTPConnection(host, int(port), timeout=60)

    def classify(self, image: bytes) -> dict[str, Any]:
        head = (
            f'--{self._BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="p.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        body = head + image + f"\r\n--{self._BOUNDARY}--\r\n".encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={self._BOUNDARY}"}
        try:
            self._connection.request("POST", "/v1/classify", body=body, headers=headers)
            response = self._connection.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # NOTE: the server closed the idle kept-alive connection between rounds: send again on a new one
            self._connection.close()
            self._connection.request("POST", "/v1/classify", body=body, headers=headers)
            response = self._connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"the edge answered {response.status}: {data[:300]!r}")
        answer: dict[str, Any] = json.loads(data)
        return answer

    def close(self) -> None:
        self._connection.close()


def end_to_end_section(logs: Path, scratch: Path, rounds: int, per_round: int) -> dict[str, Any]:
    folder = scratch / "photos"
    folder.mkdir()
    photos = _photos(folder)
    env = pair_threads_env({})  # NOTE: as `splitinfer up` starts them, nothing else set
    common = ["--model", "resnet18", "--weights", "none"]
    cloud = start_service("cloud", common, logs, env=env)
    edge = start_service(
        "edge", [*common, "--cut", "layer3", "--codec", "fp16", "--cloud-url", cloud.url], logs, env=env
    )
    requests: list[dict[str, float]] = []
    minimal: list[dict[str, float]] = []  # NOTE: bench/minimal_split.py, the floor of two HTTP processes
    baseline: list[float] = []
    one_thread: list[float] = []  # NOTE: also measured: the default can be pathological on a shared host
    minimal_processes: list[subprocess.Popen[bytes]] = []
    try:
        for service in (cloud, edge):
            wait_until(service)
        minimal_processes, minimal_url = _start_minimal_split(logs, env, photos[0])
        client, minimal_client = _LeanClient(edge.url), _LeanClient(minimal_url)
        try:
            for index in range(5):  # NOTE: warm-up
                client.classify(photos[index % len(photos)])
                minimal_client.classify(photos[index % len(photos)])
            for round_index in range(rounds):
                for target, rows in ((client, requests), (minimal_client, minimal)):
                    for index in range(per_round):
                        image = photos[(round_index * per_round + index) % len(photos)]
                        started = time.perf_counter()
                        answer = target.classify(image)
                        elapsed = (time.perf_counter() - started) * 1000
                        rows.append({"end_to_end": elapsed, **answer["timings_ms"]})
                baseline += local_baseline_process(folder, per_round)
                one_thread += local_baseline_process(folder, per_round, threads=1)
                print(
                    f"  round {round_index + 1}: end to end p50 "
                    f"{statistics.median(r['end_to_end'] for r in requests):.1f} ms, "
                    f"minimal split p50 {statistics.median(r['end_to_end'] for r in minimal):.1f} ms, "
                    f"in-process p50 {statistics.median(baseline):.1f} ms",
                    flush=True,
                )
        finally:
            client.close()
            minimal_client.close()
    finally:
        for process in minimal_processes:
            process.terminate()
            process.wait(30)
        edge.stop()
        cloud.stop()

    def median(key: str) -> float:
        return round(statistics.median(r.get(key, 0.0) for r in requests), 3)

    overhead, framework = _overheads(requests)
    minimal_overhead, minimal_framework = _overheads(minimal)
    end_to_end = statistics.median(r["end_to_end"] for r in requests)
    in_process = statistics.median(baseline)
    return {
        "model": "resnet18",
        "cut": "layer3",
        "codec": "fp16",
        "images": f"{len(photos)} skimage.data photos, JPEG q=90",
        "threads_per_service": int(env[THREADS_ENV]),
        "service_env": env,
        "requests": len(requests),
        "baseline_requests": len(baseline),
        "end_to_end_p50_ms": round(end_to_end, 3),
        "in_process_p50_ms": round(in_process, 3),
        "end_to_end_vs_in_process": round(end_to_end / in_process, 3),
        "in_process_1_thread_p50_ms": round(statistics.median(one_thread), 3),
        "end_to_end_vs_in_process_1_thread": round(end_to_end / statistics.median(one_thread), 3),
        "edge_timings_p50_ms": {
            key: median(key) for key in ("decode", "preprocess", "head", "encode", "cloud_round_trip", "cloud_tail")
        },
        "overhead_p50_ms": round(statistics.median(overhead), 3),
        "overhead_without_decode_preprocess_p50_ms": round(statistics.median(framework), 3),
        "minimal_split": {
            "requests": len(minimal),
            "end_to_end_p50_ms": round(statistics.median(r["end_to_end"] for r in minimal), 3),
            "timings_p50_ms": {
                key: round(statistics.median(r[key] for r in minimal), 3)
                for key in ("decode", "preprocess", "head", "cloud_round_trip", "cloud_tail")
            },
            "overhead_p50_ms": round(statistics.median(minimal_overhead), 3),
            "overhead_without_decode_preprocess_p50_ms": round(statistics.median(minimal_framework), 3),
        },
    }


def _overheads(requests: list[dict[str, float]]) -> tuple[list[float], list[float]]:
    """Each request's end to end time minus its head and tail compute, and minus its decode and preprocess too."""
    overhead = [r["end_to_end"] - r["head"] - r.get("cloud_tail", 0.0) for r in requests]
    framework = [o - r.get("decode", 0.0) - r.get("preprocess", 0.0) for o, r in zip(overhead, requests, strict=True)]
    return overhead, framework


def profile_section(scratch: Path) -> dict[str, Any]:
    """``splitinfer profile`` of resnet18 on this CPU as a user runs it: wall time and cut agreement."""
    out = scratch / "profile.json"
    command = [
        sys.executable,
        "-m",
        "splitinfer",
        "profile",
        "--model",
        "resnet18",
        "--weights",
        "none",
        "-o",
        str(out),
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, timeout=900)
    elapsed = time.perf_counter() - started
    profile = json.loads(out.read_text())
    cuts = {c["name"]: c for c in profile["cuts"]}
    pairs = {}
    for a, b in (("add_1", "layer1"), ("add_7", "layer4"), ("avgpool", "flatten")):
        pairs[f"{a} / {b}"] = {
            "head": round(cuts[a]["head_ms"] / cuts[b]["head_ms"], 4),
            "tail": round(cuts[a]["tail_ms"] / max(cuts[b]["tail_ms"], 1e-9), 4),
        }
    return {
        "command": "splitinfer profile --model resnet18 --weights none -o profile.json",
        "wall_s": round(elapsed, 1),
        "cuts": len(profile["cuts"]),
        "codecs_per_cut": max(len(c["codecs"]) for c in profile["cuts"]),
        "whole_model_ms": round(cuts["output"]["head_ms"], 2),
        "spread": round(profile["spread"], 3),
        "pairs": pairs,
    }


def markdown(results: dict[str, Any]) -> str:
    t, e = results["throughput"], results["end_to_end"]
    lines = [
        f"Measured {results['date']} on {results['machine']['processor']} ({results['machine']['cores']} cores, "
        f"shared with other work: load average {results['load_before']} before, {results['load_after']} after).",
        "",
        f"Throughput, `{t['load_generator']}`, {t['rounds']} alternating rounds (median):",
        "",
        "| server | requests/s | runs | server CPU ms / request | cores: server, wrk |",
        "|---|---:|---|---:|---|",
    ]
    for name, rate in t["median_requests_s"].items():
        runs = ", ".join(f"{run['requests_s']:.0f}" for run in t["runs"][name])
        cpu = statistics.median(run.get("server_cpu_ms_per_request", float("nan")) for run in t["runs"][name])
        cores = statistics.median(run.get("server_cores", float("nan")) for run in t["runs"][name])
        wrk = statistics.median(run.get("wrk_cores", float("nan")) for run in t["runs"][name])
        lines.append(f"| {name} | {rate:,.0f} | {runs} | {cpu:.3f} | {cores:.2f}, {wrk:.2f} |")
    lines += [
        "",
        f"Cloud / comparator: **{t['cloud_vs_comparator']:.2f}x** (target >= 0.6); "
        f"2 workers / 1: **{t['two_workers_vs_one']:.2f}x** (target >= 1.5).",
        "",
        f"Loopback end to end, {e['model']} `{e['cut']}` {e['codec']}, {e['images']}, concurrency 1, "
        f"{e['threads_per_service']} torch thread(s) per service"
        f"{''.join(f', `{k}={v}`' for k, v in e['service_env'].items() if k != THREADS_ENV)} (as `splitinfer up` "
        "starts them), "
        f"{e['requests']} requests; in-process baseline: `splitinfer bench --target local` in its own process "
        f"with default settings, {e['baseline_requests']} requests, alternating rounds:",
        "",
        "| | p50 ms |",
        "|---|---:|",
        f"| end to end (client) | {e['end_to_end_p50_ms']:.1f} |",
        f"| in-process (default settings) | {e['in_process_p50_ms']:.1f} |",
        f"| in-process, `OMP_NUM_THREADS=1` | {e.get('in_process_1_thread_p50_ms', float('nan')):.1f} |",
    ]
    for key, value in e["edge_timings_p50_ms"].items():
        lines.append(f"| edge timing: {key} | {value:.1f} |")
    lines += [
        f"| overhead: end to end - head - tail | {e['overhead_p50_ms']:.1f} |",
        f"| overhead without decode + preprocess | {e['overhead_without_decode_preprocess_p50_ms']:.1f} |",
    ]
    m = e.get("minimal_split")
    if m:
        lines += [
            "",
            f"The floor of two HTTP processes, `bench/minimal_split.py` (a hand-written split of the same model at the "
            f"same cut: Starlette, torchvision's transforms, fp16 safetensors over aiohttp, the model on the event "
            f"loop, no validation, metrics or deadlines), {m['requests']} requests in the same rounds:",
            "",
            "| | services p50 ms | minimal split p50 ms |",
            "|---|---:|---:|",
            f"| end to end (client) | {e['end_to_end_p50_ms']:.1f} | {m['end_to_end_p50_ms']:.1f} |",
        ]
        for key, value in m["timings_p50_ms"].items():
            lines.append(f"| {key} | {e['edge_timings_p50_ms'].get(key, float('nan')):.1f} | {value:.1f} |")
        lines += [
            f"| overhead: end to end - head - tail | {e['overhead_p50_ms']:.1f} | {m['overhead_p50_ms']:.1f} |",
            f"| overhead without decode + preprocess | {e['overhead_without_decode_preprocess_p50_ms']:.1f} | "
            f"{m['overhead_without_decode_preprocess_p50_ms']:.1f} |",
        ]
    lines += [
        "",
        f"End to end / in-process: **{e['end_to_end_vs_in_process']:.2f}x** (target <= 1.3; against the "
        f"1-thread in-process run: {e.get('end_to_end_vs_in_process_1_thread', float('nan')):.2f}x); framework "
        f"overhead **{e['overhead_p50_ms']:.1f} ms** median (target <= 3 ms).",
    ]
    p = results.get("profile")
    if p:
        agreement = "; ".join(f"{pair}: head {r['head']:.3f}, tail {r['tail']:.3f}" for pair, r in p["pairs"].items())
        lines += [
            "",
            f"`{p['command']}`: **{p['wall_s']:.1f} s** (target <= 30 s) for {p['cuts']} cuts with up to "
            f"{p['codecs_per_cut']} codecs each; whole model {p['whole_model_ms']:.1f} ms, largest spread of a cut's "
            f"repeated times (interquartile range / median) {p['spread']:.0%}. Cuts a cheap node apart (ratios "
            f"of their times): {agreement}.",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: short and few rounds")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench/overhead.py needs wrk (apt-get install wrk)")
    rounds, duration_s, per_round = (1, 2, 5) if args.quick else (3, 10, 20)
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT", "unset"),
        },
        "load_before": load_average(),
    }
    with tempfile.TemporaryDirectory() as directory:
        scratch = Path(directory)
        print("throughput (wrk)", flush=True)
        results["throughput"] = throughput_section(scratch, scratch, rounds, duration_s)
        print("end to end vs in-process", flush=True)
        results["end_to_end"] = end_to_end_section(scratch, scratch, rounds, per_round)
        print("splitinfer profile", flush=True)
        results["profile"] = profile_section(scratch)
    results["load_after"] = load_average()
    if not args.quick:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
        write_section("overhead", "overhead.py", markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
