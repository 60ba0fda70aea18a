"""Where this project's CPU goes per request in the peer comparison's setting (docs/benchmarks.md, "Against a
peer project"): resnet18 split at ``layer3``, edge (codec fp16) and cloud on one engine, one thread each.

    PYTHONPATH=. .venv/bin/python bench/peer_cpu.py [--engines onnxruntime,openvino] [--requests 200]

For each engine: the CPU time (user + system, from /proc) that the edge, the cloud and the client spend per
request at concurrency 1 and 8, the requests/s, and what one thread of ONNX Runtime spends per image on the
head and the tail at batch sizes 1, 2, 4 and 8 (does batching at concurrency 8 buy anything?). Writes
bench/results/peer_cpu.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("GOMP_SPINCOUNT", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.peer_onnx import ours, photos, run_round, seeded_export
from shared.engines import OrtHalf, OrtOptions
from splitinfer.processes import start_service, stop_all, wait_until

ROOT = Path(__file__).resolve().parents[1]


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def per_request_cpu(export: Path, weights: Path, engine: str, requests: int) -> dict[str, Any]:
    one_thread = {"SPLITINFER_THREADS": "1", "OMP_NUM_THREADS": "1", "GOMP_SPINCOUNT": "0"}
    common = ["--model", "resnet18", "--weights", str(weights), "--engine", engine, "--onnx-dir", str(export)]
    common += ["--onnx-threads", "1"]
    cloud = start_service("cloud", common, export.parent, env=one_thread)
    edge = start_service(
        "edge", [*common, "--cut", "layer3", "--codec", "fp16", "--cloud-url", cloud.url], export.parent, env=one_thread
    )
    results: dict[str, Any] = {}
    try:
        wait_until(cloud)
        wait_until(edge)
        images = photos()
        timings: list[dict[str, float]] = []
        send = ours(edge.url, timings)
        run_round(send, images, 1, 10)
        pids = {"edge": edge.process.pid, "cloud": cloud.process.pid, "client": os.getpid()}
        for concurrency in (1, 8):
            before = {name: _cpu_s(pid) for name, pid in pids.items()}
            latencies, seconds, errors = run_round(send, images, concurrency, requests)
            after = {name: _cpu_s(pid) for name, pid in pids.items()}
            done = max(len(latencies), 1)
            cpu = {name: round((after[name] - before[name]) * 1000 / done, 1) for name in pids}
            results[f"c={concurrency}"] = {
                "requests_per_s": round(len(latencies) / seconds, 1),
                "p50_ms": round(statistics.median(latencies), 1),
                "errors": errors,
                "cpu_ms_per_request": {**cpu, "total": round(sum(cpu.values()), 1)},
                "edge_timings_p50_ms": {
                    key: round(statistics.median(t[key] for t in timings[-done:]), 2) for key in timings[-1]
                },
            }
    finally:
        stop_all([edge.process, cloud.process])
    return results


def ort_batching(export: Path, rounds: int = 7) -> dict[str, dict[str, float]]:
    head = OrtHalf(export / "head.onnx", OrtOptions(intra_op_threads=1))
    tail = OrtHalf(export / "tail.onnx", OrtOptions(intra_op_threads=1))
    generator = np.random.default_rng(0)
    out: dict[str, dict[str, float]] = {}
    for batch in (1, 2, 4, 8):
        x = generator.random((batch, 3, 224, 224), dtype=np.float32)
        (y,) = head(x)
        for _ in range(2):
            tail(*head(x))
        heads, tails = [], []
        for _ in range(rounds):
            started = time.perf_counter()
            head(x)
            middle = time.perf_counter()
            tail(y)
            heads.append((middle - started) * 1000 / batch)
            tails.append((time.perf_counter() - middle) * 1000 / batch)
        out[str(batch)] = {
            "head_ms_per_image": round(statistics.median(heads), 2),
            "tail_ms_per_image": round(statistics.median(tails), 2),
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default="onnxruntime,openvino")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "peer_cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="peer-cpu-") as scratch:
        work = Path(scratch)
        weights, _ = seeded_export(work)  # NOTE: the same weights and export as bench/peer_onnx.py
        report: dict[str, Any] = {
            "command": "PYTHONPATH=. python bench/peer_cpu.py",
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_before": [round(v, 2) for v in os.getloadavg()],
            "engines": {
                engine: per_request_cpu(work / "export", weights, engine, args.requests)
                for engine in args.engines.split(",")
            },
            "onnxruntime_batching_1_thread": ort_batching(work / "export"),
        }
    report["load_after"] = [round(v, 2) for v in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
