"""Throughput of the Ray Serve cloud with 1 and with 2 replicas, measured by ``splitinfer bench`` in one run.

    .venv/bin/python bench/ray_scaleout.py            # about 5 minutes on 2 cores
    .venv/bin/python bench/report.py                  # docs/benchmarks.md from bench/results/*.json

One local Ray instance (``serve run`` on deploy/ray-serve.yaml) serves two applications side by side:
``/r1`` with one replica and ``/r2`` with two, each replica one torch thread (and half a CPU in Ray's
accounting, so that all three fit the 2-core machine at once). The load
(``splitinfer bench --target cloud``: resnet18 layer3 fp16 payloads, 16 clients) alternates between
them in rounds (ABBA: forward, backward, backward, forward), so drift of the shared machine hits both
alike. Results: bench/results/ray.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from tests.support.ray_cloud import start_ray_cloud, stop_ray_cloud

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench/results/ray.json"
APPLICATION = {"model": "resnet18", "weights": "none", "device": "cpu", "threads": 1, "max_batch_size": 16,
               "max_delay_ms": 4, "num_cpus": 0.5}  # fmt: skip


def bench(url: str, seconds: int, concurrency: int, out: Path) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "splitinfer", "bench", "--target", "cloud", "--url", url, "--model", "resnet18",
        "--weights", "none", "--cut", "layer3", "--codec", "fp16", "--concurrency", str(concurrency),
        "--duration", str(seconds), "--json", str(out),
    ]  # fmt: skip
    subprocess.run(
        command, check=False, cwd=ROOT, stdout=subprocess.DEVNULL, env={**os.environ, "SPLITINFER_THREADS": "1"}
    )
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=20, help="per measurement")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="si-ray-"))
    applications = {"/r1": {**APPLICATION, "num_replicas": 1}, "/r2": {**APPLICATION, "num_replicas": 2}}
    cloud = start_ray_cloud(work, applications)
    runs: dict[str, list[dict[str, Any]]] = {"/r1": [], "/r2": []}
    try:
        for round_index in range(args.rounds):
            # NOTE: ABBA order: always measuring one replica first gave it the quieter slot of every round
            order = list(runs) if round_index % 4 in (0, 3) else list(reversed(runs))
            for prefix in order:
                result = bench(
                    cloud.app_url(prefix), args.seconds, args.concurrency, work / f"{prefix[1:]}-{round_index}.json"
                )
                runs[prefix].append(result)
                rate, errors = result.get("throughput_img_s"), result.get("errors")
                print(f"round {round_index} {prefix}: {rate} img/s, errors {errors}")
    finally:
        stop_ray_cloud(cloud)

    def summary(prefix: str) -> dict[str, Any]:
        results = runs[prefix]
        return {
            "replicas": applications[prefix]["num_replicas"],
            "throughput_img_s": round(statistics.fmean(r["throughput_img_s"] for r in results), 1),
            "per_round_img_s": [r["throughput_img_s"] for r in results],
            "p50_ms": round(statistics.median(r["p50_ms"] for r in results), 1),
            "p99_ms": round(statistics.median(r["p99_ms"] for r in results), 1),
            "requests": sum(r["requests"] for r in results),
            "errors": sum(r["errors"] for r in results),
        }

    one, two = summary("/r1"), summary("/r2")
    data = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"cores": os.cpu_count(), "torch": torch.__version__},
        "setup": {
            **APPLICATION,
            "cut": "layer3",
            "codec": "fp16",
            "concurrency": args.concurrency,
            "seconds_per_round": args.seconds,
            "rounds": args.rounds,
            "order": "ABBA: one replica first in rounds 1 and 4, two replicas first in rounds 2 and 3",
        },
        "one_replica": one,
        "two_replicas": two,
        "speedup": round(two["throughput_img_s"] / one["throughput_img_s"], 2),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
