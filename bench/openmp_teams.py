"""OpenMP teams and wait policies: why the services load in a thread that ends, and why `up` spins briefly.

    PYTHONPATH=. .venv/bin/python bench/openmp_teams.py [--rounds 4] [--requests 15]

Writes bench/results/openmp_teams.json and its table into docs/benchmarks.md ("Per-request overhead",
between the ``openmp-teams`` markers). Two measurements, each in one run with alternating rounds:

* **teams**: resnet18's head (``layer3``, the edge's ``prepare`` on a real photo, torch's default threads)
  run by a worker thread, in a process whose model was loaded by a thread that then ended (what the
  services do) or by a thread that stays alive (what they did: its OpenMP team stays too). Each variant
  is a process of its own.
* **wait policies**: edge and cloud as ``splitinfer up`` starts them (every core each), resnet18 ``layer3``
  ``fp16``, concurrency 1, one pair of services per idle-thread policy: ``GOMP_SPINCOUNT=10000`` (``up``'s
  default), ``OMP_WAIT_POLICY=PASSIVE`` (sleep at once) and GNU OpenMP's default (no setting); against
  ``splitinfer bench --target local`` in a process of its own with default settings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.doc_section import write_section
from bench.overhead import _LeanClient, _photos
from splitinfer.bench import local_baseline_process
from splitinfer.processes import start_service, wait_until
from splitinfer.threads import PAIR_SPIN_COUNT, SPIN_COUNT_ENV, THREADS_ENV, WAIT_POLICY_ENV, available_cores

ROOT = Path(__file__).resolve().parents[1]

# NOTE: run in a process of its own per variant: the model loaded by a thread that ends, or stays alive
_TEAMS_PROBE = """
import io, json, statistics, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from bench.photos import real_photos
from edge_service.runtime import EdgeModel
from shared.models import load_model
from shared.preprocessing import ImageLimits

loader_kept, requests = sys.argv[1] == "kept", int(sys.argv[2])
buffer = io.BytesIO()
next(iter(real_photos(crops_per_photo=0)))[1].convert("RGB").save(buffer, format="JPEG", quality=90)

def load():
    model = EdgeModel(load_model("resnet18", "none"), ImageLimits())
    route = model.route_for("layer3", "fp16")
    model.build(route)
    model.prepare([buffer.getvalue()], route)
    return model, route

if loader_kept:
    loader = ThreadPoolExecutor(1)
    model, route = loader.submit(load).result()
else:
    with ThreadPoolExecutor(1) as loader:
        model, route = loader.submit(load).result()
heads = ThreadPoolExecutor(1)
run = lambda: model.prepare([buffer.getvalue()], route).timings_ms["head"]
for _ in range(5):
    heads.submit(run).result()
print(json.dumps([heads.submit(run).result() for _ in range(requests)]))
"""


def teams_section(rounds: int, requests: int) -> dict[str, Any]:
    samples: dict[str, list[float]] = {"loader ended (as served)": [], "loader kept alive (before)": []}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for key in (THREADS_ENV, "OMP_NUM_THREADS", SPIN_COUNT_ENV, WAIT_POLICY_ENV):
        env.pop(key, None)
    for round_index in range(rounds):
        order = list(samples) if round_index % 2 == 0 else list(reversed(samples))
        for name in order:
            mode = "kept" if "kept" in name else "ended"
            done = subprocess.run(
                [sys.executable, "-c", _TEAMS_PROBE, mode, str(requests)],
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
                check=True,
            )
            samples[name] += json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"  teams round {round_index + 1}: "
            + ", ".join(f"{k} {statistics.median(v):.1f} ms" for k, v in samples.items())
        )
    return {
        "head_p50_ms": {k: round(statistics.median(v), 2) for k, v in samples.items()},
        "requests": requests * rounds,
    }


POLICIES: dict[str, dict[str, str]] = {
    f"{SPIN_COUNT_ENV}={PAIR_SPIN_COUNT} (up's default)": {SPIN_COUNT_ENV: PAIR_SPIN_COUNT},
    f"{WAIT_POLICY_ENV}=PASSIVE": {WAIT_POLICY_ENV: "PASSIVE"},
    "GNU OpenMP's default": {},
}


def policies_section(scratch: Path, rounds: int, requests: int) -> dict[str, Any]:
    folder = scratch / "photos"
    folder.mkdir()
    photos = _photos(folder)
    common = ["--model", "resnet18", "--weights", "none"]
    pairs = {}
    for name, policy in POLICIES.items():
        env = {THREADS_ENV: str(available_cores()), **policy}
        cloud = start_service("cloud", common, scratch, env=env)
        edge = start_service(
            "edge", [*common, "--cut", "layer3", "--codec", "fp16", "--cloud-url", cloud.url], scratch, env=env
        )
        pairs[name] = (cloud, edge)
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in POLICIES}
    baseline: list[float] = []
    try:
        for cloud, edge in pairs.values():
            wait_until(cloud)
            wait_until(edge)
        clients = {name: _LeanClient(edge.url) for name, (_, edge) in pairs.items()}
        for client in clients.values():
            for index in range(5):
                client.classify(photos[index % len(photos)])
        for round_index in range(rounds):
            order = list(POLICIES) if round_index % 2 == 0 else list(reversed(POLICIES))
            for name in order:
                for index in range(requests):
                    started = time.perf_counter()
                    answer = clients[name].classify(photos[(round_index * requests + index) % len(photos)])
                    elapsed = (time.perf_counter() - started) * 1000
                    samples[name].append({"end_to_end": elapsed, **answer["timings_ms"]})
            baseline += local_baseline_process(folder, requests)
            print(f"  policies round {round_index + 1} done", flush=True)
        for client in clients.values():
            client.close()
    finally:
        for cloud, edge in pairs.values():
            edge.stop()
            cloud.stop()
    in_process = statistics.median(baseline)

    def median(rows: list[dict[str, float]], key: str) -> float:
        return round(statistics.median(r.get(key, 0.0) for r in rows), 2)

    return {
        "in_process_p50_ms": round(in_process, 2),
        "policies": {
            name: {
                "end_to_end_p50_ms": median(rows, "end_to_end"),
                "vs_in_process": round(median(rows, "end_to_end") / in_process, 3),
                "head_p50_ms": median(rows, "head"),
                "cloud_tail_p50_ms": median(rows, "cloud_tail"),
                "cloud_round_trip_p50_ms": median(rows, "cloud_round_trip"),
            }
            for name, rows in samples.items()
        },
        "requests_per_policy": requests * rounds,
    }


def markdown(report: dict[str, Any]) -> str:
    """The tables of docs/benchmarks.md for one run."""
    m, teams, policies = report["machine"], report["teams"], report["policies"]
    lines = [
        f"`{report['command']}`, {report['when']}, {m['cpu']} ({m['cores']} cores; load average "
        f"{', '.join(str(v) for v in m['load_before'])} before, {', '.join(str(v) for v in m['load_after'])} "
        f"after), torch {m['torch']}. Raw numbers: `bench/results/openmp_teams.json`.",
        "",
        f"resnet18's head (`layer3`, one photo, torch's default threads) on a worker thread, "
        f"{teams['requests']} runs per variant, a process each:",
        "",
        "| the thread that loaded the model | head p50 ms |",
        "|---|---:|",
        *(f"| {name} | {ms:.1f} |" for name, ms in teams["head_p50_ms"].items()),
        "",
        f"Edge and cloud with every core each, resnet18 `layer3` `fp16`, concurrency 1, "
        f"{policies['requests_per_policy']} requests per policy; in-process (default settings): "
        f"{policies['in_process_p50_ms']:.1f} ms p50:",
        "",
        "| idle OpenMP threads | end to end p50 ms | / in-process | head ms | cloud tail ms | cloud round trip ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in policies["policies"].items():
        lines.append(
            f"| {name} | {row['end_to_end_p50_ms']:.1f} | {row['vs_in_process']:.2f}x | {row['head_p50_ms']:.1f} "
            f"| {row['cloud_tail_p50_ms']:.1f} | {row['cloud_round_trip_p50_ms']:.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=15, help="requests per round and variant")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "openmp_teams.json")
    parser.add_argument("--no-doc", action="store_true", help="leave docs/benchmarks.md as it is (smoke runs)")
    args = parser.parse_args()
    import torch

    load_before = [round(v, 2) for v in os.getloadavg()]
    teams = teams_section(args.rounds, args.requests)
    with tempfile.TemporaryDirectory(prefix="openmp-teams-") as scratch:
        policies = policies_section(Path(scratch), args.rounds, args.requests)
    report = {
        "command": "PYTHONPATH=. python bench/openmp_teams.py",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": available_cores(),
            "torch": torch.__version__,
            "load_before": load_before,
            "load_after": [round(v, 2) for v in os.getloadavg()],
        },
        "teams": teams,
        "policies": policies,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    if not args.no_doc:
        write_section("openmp-teams", "openmp_teams.py", markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
