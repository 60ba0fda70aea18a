"""Side by side with a peer project: Open-Edge-Robotics' A.EdgeAI-Split-Computing, its ONNX variant.

    git clone https://github.com/Open-Edge-Robotics/A.EdgeAI-Split-Computing /tmp/peer   # not vendored
    .venv/bin/python bench/peer_onnx.py --peer /tmp/peer [--rounds 6] [--out bench/results/peer_onnx.json]

``--peer`` is a checkout or a bare git directory of the peer's repository; its ``tail_server`` folder is
copied into a temporary folder and run from there. Both sides run the same graph: resnet18 split at
``layer3`` by this project and exported with ``splitinfer export`` (seeded weights, saved to a file both
sides load), the peer's ``models/head.onnx`` and ``models/tail.onnx`` being our two files.

* the peer: its FastAPI tail server (``tail_server/server-run.py``, ``POST /infer_tail_none``, ONNX Runtime)
  and its client's steps (``robot-run.py``: PIL decode, its ``preprocess``, the head on ONNX Runtime, the
  raw float32 activations and a JSON shape in a multipart POST), the head session cached (the peer's
  client opens one per image);
* this project: the edge (``ENGINE=onnxruntime``, codec fp16) in front of the cloud (``ENGINE=onnxruntime``),
  the client POSTing the JPEG to ``/v1/classify``; validation, Prometheus metrics and access logs on.

Every process runs with one thread (ONNX Runtime intra-op 1, torch 1; the peer's session options are
set by a launcher, bench/peer_launch.py, since its code takes the default). Rounds alternate the two
systems (ABBA order) request by request on the same images, at concurrency 1 and 8.
"""

from __future__ import annotations

import os

os.environ.setdefault("GOMP_SPINCOUNT", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import io
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

from shared.engines import OrtHalf, OrtOptions
from shared.models import load_model
from shared.onnx_export import export_split
from shared.splitting import ModelGraph
from splitinfer.processes import Service, free_port, start_service, wait_until

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field")


def photos() -> list[bytes]:
    from skimage import data

    blobs = []
    for name in PHOTOS:
        image = Image.fromarray(np.asarray(getattr(data, name)())).convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        blobs.append(buffer.getvalue())
    return blobs


def copy_peer(peer: Path, into: Path) -> Path:
    """The peer's tail_server folder, from a checkout or a (bare) git directory."""
    if (peer / "tail_server").is_dir():
        shutil.copytree(peer / "tail_server", into / "tail_server")
    else:
        archive = subprocess.run(
            ["git", f"--git-dir={peer}", "archive", "HEAD", "tail_server"], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "tail_server"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class PeerClient:
    """The peer client's steps (robot-run.py) with its preprocessing, the head session cached, 1 thread."""

    def __init__(self, folder: Path, url: str) -> None:
        sys.path.insert(0, str(folder))
        from preprocessing import preprocess  # the peer's own module, from the temporary folder

        self.preprocess = preprocess
        self.head = OrtHalf(folder / "models" / "head.onnx", OrtOptions(intra_op_threads=1))
        self.url = url + "/infer_tail_none"

    def __call__(self, client: httpx.Client, jpeg: bytes) -> str:
        image = Image.open(io.BytesIO(jpeg)).convert("RGB")
        feature = self.head(self.preprocess(image))[0]
        metadata = {"original_shape": list(feature.shape), "dtype": feature.dtype.name}
        files = {
            "file": ("data.bin", feature.tobytes(), "application/octet-stream"),
            "metadata": (None, json.dumps(metadata), "application/json"),
        }
        response = client.post(self.url, files=files)
        response.raise_for_status()
        return str(response.json()["label"])


def ours(url: str, timings: list[dict[str, float]]) -> Callable[[httpx.Client, bytes], str]:
    def send(client: httpx.Client, jpeg: bytes) -> str:
        response = client.post(url + "/v1/classify", files={"image": ("photo.jpg", jpeg, "image/jpeg")})
        response.raise_for_status()
        body = response.json()
        timings.append(body["timings_ms"])
        return str(body["predictions"][0]["index"])

    return send


def run_round(
    send: Callable[[httpx.Client, bytes], str], images: list[bytes], concurrency: int, count: int
) -> tuple[list[float], float, int]:
    """``count`` requests from ``concurrency`` threads; latencies (ms), wall seconds, errors."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    next_index = iter(range(count))

    def worker() -> None:
        nonlocal errors
        with httpx.Client(timeout=60) as client:
            while True:
                with lock:
                    index = next(next_index, None)
                if index is None:
                    return
                start = time.perf_counter()
                try:
                    send(client, images[index % len(images)])
                except httpx.HTTPError:
                    with lock:
                        errors += 1
                    continue
                elapsed = (time.perf_counter() - start) * 1000
                with lock:
                    latencies.append(elapsed)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, time.perf_counter() - start, errors


def markdown(report: dict[str, Any]) -> str:
    """The table of docs/benchmarks.md for one run."""
    rows = report["results"]
    lines = [
        "| | this project (ONNX Runtime, fp16 wire) | the peer (ONNX Runtime, session cached) | ours / peer |",
        "|---|---|---|---|",
    ]
    for c in (1, 8):
        ours_row, peer_row = rows[f"ours@{c}"], rows[f"peer@{c}"]
        lines.append(
            f"| latency at concurrency {c}, p50 / p95 | {ours_row['p50_ms']:.1f} / {ours_row['p95_ms']:.1f} ms "
            f"| {peer_row['p50_ms']:.1f} / {peer_row['p95_ms']:.1f} ms "
            f"| {ours_row['p50_ms'] / peer_row['p50_ms']:.2f}x |"
        )
        lines.append(
            f"| requests/s at concurrency {c} | {ours_row['requests_per_s']:.1f} | {peer_row['requests_per_s']:.1f} "
            f"| {ours_row['requests_per_s'] / peer_row['requests_per_s']:.2f}x |"
        )
    errors = sum(r["errors"] for r in rows.values())
    lines.append("")
    lines.append(f"Requests: {sum(r['requests'] for r in rows.values())}, errors: {errors}.")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer", required=True, type=Path, help="the peer's checkout or git directory")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=30, help="requests per round at concurrency 1")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "peer_onnx.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = photos()
    work = Path(tempfile.mkdtemp(prefix="peer-onnx-"))
    services: list[Service] = []
    try:
        folder = copy_peer(args.peer, work)
        torch.manual_seed(20)
        import torchvision

        weights = work / "resnet18.pt"
        torch.save(torchvision.models.resnet18().state_dict(), weights)
        loaded = load_model("resnet18", str(weights))
        graph = ModelGraph(loaded.module, loaded.input_shape)
        exported = export_split(
            graph, "layer3", model=loaded.name, weights=loaded.digest, preprocessing=loaded.preprocessor.to_json()
        )
        exported.write(work / "export")
        (folder / "models").mkdir(exist_ok=True)
        shutil.copy(work / "export" / "head.onnx", folder / "models" / "head.onnx")
        shutil.copy(work / "export" / "tail.onnx", folder / "models" / "tail.onnx")

        one_thread = {"SPLITINFER_THREADS": "1", "OMP_NUM_THREADS": "1", "GOMP_SPINCOUNT": "0"}
        common = ["--model", "resnet18", "--weights", str(weights), "--engine", "onnxruntime"]
        common += ["--onnx-dir", str(work / "export"), "--onnx-threads", "1"]
        cloud = start_service("cloud", common, work, env=one_thread)
        services.append(cloud)
        edge = start_service(
            "edge", [*common, "--cut", "layer3", "--codec", "fp16", "--cloud-url", cloud.url], work, env=one_thread
        )
        services.append(edge)
        port = free_port()
        log = work / "peer.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "peer_launch.py"), "--port", str(port)],
                cwd=folder,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env={**os.environ, **one_thread},
                start_new_session=True,
            )
        peer = Service("peer", port, process, log)
        services.append(peer)
        for service in (cloud, edge):
            wait_until(service)
        wait_until(peer, "/docs")

        timings: list[dict[str, float]] = []
        systems: dict[str, Callable[[httpx.Client, bytes], str]] = {
            "ours": ours(edge.url, timings),
            "peer": PeerClient(folder, peer.url),
        }
        for send in systems.values():  # warm-up: sessions, connections, first-request paths
            run_round(send, images, 1, 10)
        timings.clear()
        results: dict[str, Any] = {}
        at_one: list[dict[str, float]] = []
        for concurrency in (1, 8):
            count = args.requests * (1 if concurrency == 1 else 4)
            samples: dict[str, dict[str, Any]] = {
                k: {"latencies": [], "seconds": 0.0, "requests": 0, "errors": 0} for k in systems
            }
            for round_index in range(args.rounds):
                order = list(systems) if round_index % 4 in (0, 3) else list(reversed(systems))
                for name in order:
                    latencies, seconds, errors = run_round(systems[name], images, concurrency, count)
                    sample = samples[name]
                    sample["latencies"] += latencies
                    sample["seconds"] += seconds
                    sample["requests"] += len(latencies)
                    sample["errors"] += errors
            if concurrency == 1:
                at_one = list(timings)
            for name, sample in samples.items():
                lat = sample["latencies"]
                results[f"{name}@{concurrency}"] = {
                    "system": name,
                    "concurrency": concurrency,
                    "requests": sample["requests"],
                    "errors": sample["errors"],
                    "p50_ms": round(statistics.median(lat), 2),
                    "p95_ms": round(percentile(lat, 95), 2),
                    "requests_per_s": round(sample["requests"] / sample["seconds"], 2),
                }
        labels = {name: [send(httpx.Client(timeout=60), jpeg) for jpeg in images] for name, send in systems.items()}
        report = {
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "rounds": args.rounds,
            "requests_per_round": {"1": args.requests, "8": args.requests * 4},
            "results": results,
            "ratios": {
                "p50_at_1_ours_over_peer": round(results["ours@1"]["p50_ms"] / results["peer@1"]["p50_ms"], 3),
                "rps_at_8_ours_over_peer": round(
                    results["ours@8"]["requests_per_s"] / results["peer@8"]["requests_per_s"], 3
                ),
            },
            "top1": labels,
            "our_edge_timings_ms_median_at_1": {
                key: round(statistics.median(t[key] for t in at_one if key in t), 2)
                for key in sorted({k for t in at_one for k in t})
            },
            "export_max_abs_error": {
                "head": exported.manifest.head.max_abs_error,
                "tail": exported.manifest.tail.max_abs_error,
            },
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        print(markdown(report))
        return 0
    finally:
        for service in services:
            service.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
