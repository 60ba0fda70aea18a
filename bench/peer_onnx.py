"""Side by side with a peer project: Open-Edge-Robotics' A.EdgeAI-Split-Computing, its ONNX variant.

    git clone https://github.com/Open-Edge-Robotics/A.EdgeAI-Split-Computing /tmp/peer   # not vendored
    PYTHONPATH=. .venv/bin/python bench/peer_onnx.py --peer /tmp/peer [--rounds 6] [--engines E1,E2]

It writes bench/results/peer_onnx.json and its table into docs/benchmarks.md ("Against a peer project");
``--out FILE --no-doc`` for a smoke run that changes neither.

``--peer`` is a checkout or a bare git directory of the peer's repository; its ``tail_server`` folder is
copied into a temporary folder and run from there. Both sides run the same graph: resnet18 split at
``layer3`` by this project and exported with ``splitinfer export`` (seeded weights, saved to a file both
sides load), the peer's ``models/head.onnx`` and ``models/tail.onnx`` being our two files.

* the peer: its FastAPI tail server (``tail_server/server-run.py``, ``POST /infer_tail_none``, ONNX Runtime)
  and its client's steps (``robot-run.py``: PIL decode, its ``preprocess``, the head on ONNX Runtime, the
  raw float32 activations and a JSON shape in a multipart POST), the head session cached (the peer's
  client opens one per image);
* this project: the edge (codec fp16) in front of the cloud, both on the same engine, once per ``--engines``
  entry: ``onnxruntime``, ``openvino`` (f32, within 1e-4 of torch) and ``openvino-bf16`` (OpenVINO's bf16
  kernels: not exact, labelled as such; skipped on a CPU without bf16); the client POSTing the JPEG to
  ``/v1/classify``; validation, Prometheus metrics and access logs on.

``--threads default`` (the default): each side with its own defaults, what a user of each runs. The peer's
server and its client's head take ONNX Runtime's default options (an intra-op thread per core), the
peer's server launched unmodified but for its address (bench/peer_launch.py); this project's services
start as ``splitinfer up`` starts them (``splitinfer.threads.pair_threads_env``, ``ONNX_THREADS`` at its
default of 1, the edge's ``HEAD_WORKERS`` at its default); no harness variable (``OMP_NUM_THREADS``,
``GOMP_SPINCOUNT``, ...) reaches either side. ``--threads one``: every process with one thread (ONNX
Runtime intra-op 1, torch 1, ``GOMP_SPINCOUNT=0``; the peer's session options then set by the launcher):
equal, but **not the peer's defaults**, so its results are labelled as tuned. Rounds alternate the
systems (forward, backward, backward, forward: ABBA for two) on the same images, at concurrency 1 and 8.
Top-1 answers of every system on the photos are compared with the peer's (by label).
"""

from __future__ import annotations

import argparse
import io
import json
import os
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

from bench.doc_section import write_section
from shared.engines import OrtHalf, OrtOptions
from shared.models import load_model
from shared.onnx_export import ExportedSplit, export_split
from shared.splitting import ModelGraph
from splitinfer.bench import USER_DEFAULT_ENV
from splitinfer.processes import Service, free_port, start_service, wait_until
from splitinfer.threads import pair_threads_env

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


def seeded_export(work: Path) -> tuple[Path, ExportedSplit]:
    """resnet18 with seeded random weights saved to ``work/resnet18.pt`` (the file both sides load) and its
    verified split at ``layer3`` written to ``work/export``."""
    import torchvision

    torch.manual_seed(20)  # NOTE: torchvision initialises with the global RNG; this process only benchmarks
    weights = work / "resnet18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    loaded = load_model("resnet18", str(weights))
    graph = ModelGraph(loaded.module, loaded.input_shape)
    exported = export_split(
        graph, "layer3", model=loaded.name, weights=loaded.digest, preprocessing=loaded.preprocessor.to_json()
    )
    exported.write(work / "export")
    return weights, exported


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


def normalized_label(label: str) -> str:
    """A class label compared across the two projects (ours ``cowboy boot``, the peer's ``cowboy_boot``)."""
    return label.strip().lower().replace(" ", "_")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class PeerClient:
    """The peer client's steps (robot-run.py) with its preprocessing, the head session cached, with ONNX
    Runtime's default threads (``intra_op_threads=0``: one per core) or one."""

    def __init__(self, folder: Path, url: str, intra_op_threads: int = 0) -> None:
        sys.path.insert(0, str(folder))
        from preprocessing import preprocess  # the peer's own module, from the temporary folder

        self.preprocess = preprocess
        self.head = OrtHalf(folder / "models" / "head.onnx", OrtOptions(intra_op_threads=intra_op_threads))
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
        return normalized_label(str(response.json()["label"]))


def ours(url: str, timings: list[dict[str, float]]) -> Callable[[httpx.Client, bytes], str]:
    def send(client: httpx.Client, jpeg: bytes) -> str:
        response = client.post(url + "/v1/classify", files={"image": ("photo.jpg", jpeg, "image/jpeg")})
        response.raise_for_status()
        body = response.json()
        timings.append(body["timings_ms"])
        return normalized_label(str(body["predictions"][0]["label"]))

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


LABELS = {
    "ours": "this project, ONNX Runtime",
    "ours-openvino": "this project, OpenVINO f32",
    "ours-openvino-bf16": "this project, OpenVINO **bf16 (not exact)**",
    "peer": "the peer (ONNX Runtime, session cached)",
}
ENGINES = {
    "onnxruntime": ("ours", "f32"),
    "openvino": ("ours-openvino", "f32"),
    "openvino-bf16": ("ours-openvino-bf16", "bf16"),
}


def markdown(report: dict[str, Any]) -> str:
    """The table of docs/benchmarks.md for one run: one row per system, ratios against the peer."""
    rows = report["results"]
    systems = [name for name in LABELS if f"{name}@1" in rows]
    m = report["machine"]
    threads = report.get("threads", "one")
    setting = (
        "each side with its own default threads (the peer's ONNX Runtime sessions one thread per core; this "
        "project as `splitinfer up` starts it)"
        if threads == "default"
        else "**every process pinned to one thread: not the peer's defaults** (its sessions would take a "
        "thread per core)"
    )
    lines = [
        f"`{report['command']}`, {setting}, {report['when']}, {m['cpu']} ({m['cores']} cores; load average "
        f"{', '.join(str(v) for v in m['load_before'])} before, {', '.join(str(v) for v in m['load_after'])} "
        f"after), onnxruntime {m['onnxruntime']}, openvino {m['openvino']}. Raw numbers: "
        f"`{report.get('out', 'bench/results/peer_onnx.json')}`.",
        "",
        "| system | p50 / p95 at c=1 | req/s at c=1 | p50 / p95 at c=8 | req/s at c=8 | p50 at c=1 / peer's "
        "| req/s at c=8 / peer's | top-1 = peer's |",
        "|---|---|---|---|---|---|---|---|",
    ]
    peer1, peer8 = rows["peer@1"], rows["peer@8"]
    for name in systems:
        one, eight = rows[f"{name}@1"], rows[f"{name}@8"]
        agree = report["top1_agreement_with_peer"][name]
        lines.append(
            f"| {LABELS[name]} | {one['p50_ms']:.1f} / {one['p95_ms']:.1f} ms | {one['requests_per_s']:.1f} "
            f"| {eight['p50_ms']:.1f} / {eight['p95_ms']:.1f} ms | {eight['requests_per_s']:.1f} "
            f"| {one['p50_ms'] / peer1['p50_ms']:.2f}x | {eight['requests_per_s'] / peer8['requests_per_s']:.2f}x "
            f"| {agree}/{len(report['top1']['peer'])} |"
        )
    errors = sum(r["errors"] for r in rows.values())
    lines.append("")
    lines.append(
        f"Requests: {sum(r['requests'] for r in rows.values())}, errors: {errors}. Targets (p50 at c=1 <= 0.9x "
        "the peer's, req/s at c=8 >= 1.1x): "
        + "; ".join(
            f"{LABELS[name]}: {'met' if report['targets_met'][name] else 'not met'}"
            for name in systems
            if name != "peer"
        )
        + "."
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer", required=True, type=Path, help="the peer's checkout or git directory")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=30, help="requests per round at concurrency 1")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "peer_onnx.json")
    parser.add_argument(
        "--engines", default="onnxruntime,openvino,openvino-bf16", help=f"ours, comma-separated: {', '.join(ENGINES)}"
    )
    parser.add_argument("--no-doc", action="store_true", help="leave docs/benchmarks.md as it is (smoke runs)")
    parser.add_argument(
        "--threads",
        choices=("default", "one"),
        default="default",
        help="default: each side's own defaults (a fair baseline); one: every process one thread (the peer tuned)",
    )
    args = parser.parse_args()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        parser.error(f"unknown engines {unknown}; expected {', '.join(ENGINES)}")
    skipped: list[str] = []
    if "openvino-bf16" in engines:
        from shared.ov_engine import cpu_capabilities

        if "BF16" not in cpu_capabilities():
            engines.remove("openvino-bf16")
            skipped.append("openvino-bf16 (this CPU has no bfloat16 instructions)")
    load_before = [round(v, 2) for v in os.getloadavg()]
    one = args.threads == "one"
    if one:
        torch.set_num_threads(1)
    images = photos()
    work = Path(tempfile.mkdtemp(prefix="peer-onnx-"))
    services: list[Service] = []
    try:
        folder = copy_peer(args.peer, work)
        weights, exported = seeded_export(work)
        (folder / "models").mkdir(exist_ok=True)
        shutil.copy(work / "export" / "head.onnx", folder / "models" / "head.onnx")
        shutil.copy(work / "export" / "tail.onnx", folder / "models" / "tail.onnx")

        # NOTE: default: ours as `splitinfer up` starts them, the peer with nothing of the harness's environment
        one_thread = {"SPLITINFER_THREADS": "1", "OMP_NUM_THREADS": "1", "GOMP_SPINCOUNT": "0"}
        ours_env = one_thread if one else pair_threads_env({})
        edges: dict[str, Service] = {}
        for engine in engines:
            name, precision = ENGINES[engine]
            common = ["--model", "resnet18", "--weights", str(weights), "--engine", engine.removesuffix("-bf16")]
            common += ["--onnx-dir", str(work / "export"), "--openvino-precision", precision]
            common += ["--onnx-threads", "1"] if one else []
            cloud = start_service("cloud", common, work, env=ours_env)
            services.append(cloud)
            edge = start_service(
                "edge", [*common, "--cut", "layer3", "--codec", "fp16", "--cloud-url", cloud.url], work, env=ours_env
            )
            services.append(edge)
            edges[name] = edge
        port = free_port()
        log = work / "peer.log"
        with log.open("wb") as sink:
            plain = {k: v for k, v in os.environ.items() if k not in USER_DEFAULT_ENV}
            process = subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "peer_launch.py"), "--port", str(port)]
                + (["--one-thread"] if one else []),
                cwd=folder,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env={**plain, **one_thread} if one else plain,
                start_new_session=True,
            )
        peer = Service("peer", port, process, log)
        services.append(peer)
        for service in services[:-1]:
            wait_until(service)
        wait_until(peer, "/docs")

        timings: dict[str, list[dict[str, float]]] = {name: [] for name in edges}
        systems: dict[str, Callable[[httpx.Client, bytes], str]] = {
            name: ours(edge.url, timings[name]) for name, edge in edges.items()
        }
        systems["peer"] = PeerClient(folder, peer.url, intra_op_threads=1 if one else 0)
        for send in systems.values():  # warm-up: sessions, connections, first-request paths
            run_round(send, images, 1, 10)
        for recorded in timings.values():
            recorded.clear()
        results: dict[str, Any] = {}
        at_one: dict[str, list[dict[str, float]]] = {}
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
                at_one = {name: list(recorded) for name, recorded in timings.items()}
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
        with httpx.Client(timeout=60) as client:
            labels = {name: [send(client, jpeg) for jpeg in images] for name, send in systems.items()}
        import onnxruntime
        import openvino

        p50_ratio = {n: results[f"{n}@1"]["p50_ms"] / results["peer@1"]["p50_ms"] for n in edges}
        rps_ratio = {n: results[f"{n}@8"]["requests_per_s"] / results["peer@8"]["requests_per_s"] for n in edges}
        command = f"python bench/peer_onnx.py --peer PEER --rounds {args.rounds} --requests {args.requests}"
        command += f" --threads {args.threads}"
        report = {
            "threads": args.threads,
            "command": command
            + ("" if args.engines == parser.get_default("engines") else f" --engines {args.engines}"),
            "machine": {
                "cpu": platform.processor() or platform.machine(),
                "cores": os.cpu_count(),
                "onnxruntime": onnxruntime.__version__,
                "openvino": openvino.__version__.split("-")[0],
                "load_before": load_before,
                "load_after": [round(v, 2) for v in os.getloadavg()],
            },
            "skipped": skipped,
            "out": str(args.out.resolve().relative_to(ROOT))
            if args.out.resolve().is_relative_to(ROOT)
            else str(args.out),
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "rounds": args.rounds,
            "requests_per_round": {"1": args.requests, "8": args.requests * 4},
            "results": results,
            "ratios": {
                name: {"p50_at_1_over_peer": round(p50_ratio[name], 3), "rps_at_8_over_peer": round(rps_ratio[name], 3)}
                for name in edges
            },
            "targets_met": {name: p50_ratio[name] <= 0.9 and rps_ratio[name] >= 1.1 for name in edges},
            "top1": labels,
            "top1_agreement_with_peer": {
                name: sum(a == b for a, b in zip(answers, labels["peer"], strict=True))
                for name, answers in labels.items()
            },
            "our_edge_timings_ms_median_at_1": {
                name: {
                    key: round(statistics.median(t[key] for t in recorded if key in t), 2)
                    for key in sorted({k for t in recorded for k in t})
                }
                for name, recorded in at_one.items()
            },
            "export_max_abs_error": {
                "head": exported.manifest.head.max_abs_error,
                "tail": exported.manifest.tail.max_abs_error,
            },
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        if not args.no_doc:
            write_section("peer-onnx", "peer_onnx.py", markdown(report))
        print(markdown(report))
        return 0
    finally:
        for service in services:
            service.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
