"""Emulated-link benchmark: the edge and the cloud in two network namespaces, a shaped link between them.

    sudo .venv/bin/python bench/netlink.py            # about 25 minutes on 2 cores
    sudo .venv/bin/python bench/netlink.py --quick    # a smoke run
    .venv/bin/python bench/report.py                  # docs/benchmarks.md from bench/results/*.json

Needs root, ``ip`` and ``tc`` (iproute2), ``nsenter`` and the cgroup-v1 ``cpu`` controller. It creates

* namespaces ``si-edge`` and ``si-cloud`` joined by the veth pair ``si-e0``/``si-c0`` (10.231.0.1/.2);
  the rate of each direction is shaped with ``tc tbf``;
* a delaying TCP relay (bench/delay_relay.py) in ``si-edge`` between the edge and the link, adding
  half the RTT in each direction (this kernel has no ``netem``);
* the cgroup ``cpu/si-edge`` capping the edge (its profile included) at ``--edge-cpu`` of one core,
  so that the edge is a weaker machine than the cloud, as edge devices are;

and removes all of them afterwards. Per model it measures both profiles, starts a cloud (in
``si-cloud``) and an edge with ``--cut auto`` (in ``si-edge``), and for each link measures ``auto``
(after ``--settle-s`` of traffic on the link), then every single-tensor cut (with the codec the
planner prefers for it on that link) pinned per request; finally it lowers the rate during a run and
records when the edge moves its cut.
Results: bench/results/netlink.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("GOMP_SPINCOUNT", "0")  # NOTE: every process of the testbed, both sides alike (2 cores)

import argparse
import io
import itertools
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from shared.planning import Profile, plan
from shared.units import parse_bandwidth, parse_duration
from splitinfer.processes import spawn, stop_all, wait_ready
from splitinfer.samples import synthetic_image

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench/results/netlink.json"
NS_EDGE, NS_CLOUD = "si-edge", "si-cloud"
VETH_EDGE, VETH_CLOUD = "si-e0", "si-c0"
EDGE_IP, CLOUD_IP = "10.231.0.1", "10.231.0.2"
CGROUP = Path("/sys/fs/cgroup/cpu/si-edge")
EDGE_PORT, RELAY_PORT, CLOUD_PORT = 8000, 9001, 8001
MODELS = ("resnet18", "mobilenet_v3_large")


@dataclass(frozen=True)
class Link:
    rate: str
    rtt: str

    @property
    def name(self) -> str:
        return f"{self.rate} + {self.rtt} RTT"

    @property
    def bandwidth_bps(self) -> float:
        return parse_bandwidth(self.rate)

    @property
    def rtt_s(self) -> float:
        return parse_duration(self.rtt)


LINKS = (Link("1gbit", "1ms"), Link("50mbit", "20ms"), Link("5mbit", "50ms"))


def in_netns(netns: str, command: list[str]) -> list[str]:
    """Run in a namespace's network only (``ip netns exec`` would also hide the cgroup mounts)."""
    return ["nsenter", f"--net=/var/run/netns/{netns}", *command]


def run(*command: str) -> None:
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


# --- the testbed: namespaces, veth, shaping, the edge's cgroup ------------------------------------


def veth_pair(ends: tuple[tuple[str, str, str], tuple[str, str, str]]) -> None:
    """Two network namespaces joined by a veth pair: each end ``(namespace, device, address)``, up, with
    its loopback up too."""
    (ns_a, dev_a, _), (ns_b, dev_b, _) = ends
    run("ip", "netns", "add", ns_a)
    run("ip", "netns", "add", ns_b)
    run("ip", "link", "add", dev_a, "type", "veth", "peer", "name", dev_b)
    for dev in (dev_a, dev_b):
        # NOTE: no GSO super-packets: tbf never sends a packet larger than its burst, so one queued at a
        # high rate (large burst) would block the queue for good once the rate is lowered.
        run("ip", "link", "set", "dev", dev, "gso_max_size", "1500", "gso_max_segs", "1")
    for ns, dev, ip in ends:
        run("ip", "link", "set", dev, "netns", ns)
        run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
        run("ip", "-n", ns, "link", "set", dev, "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")


def setup(edge_cpu: float) -> None:
    teardown()
    veth_pair(((NS_EDGE, VETH_EDGE, EDGE_IP), (NS_CLOUD, VETH_CLOUD, CLOUD_IP)))
    CGROUP.mkdir(exist_ok=True)
    # Short periods: a uniformly slower CPU rather than bursts of full speed and long stalls (the
    # kernel refuses quotas under 1 ms).
    period_us = max(1_000, int(1_000 / edge_cpu))
    (CGROUP / "cpu.cfs_period_us").write_text(str(period_us))
    (CGROUP / "cpu.cfs_quota_us").write_text(str(int(period_us * edge_cpu)))


def teardown() -> None:
    for ns in (NS_EDGE, NS_CLOUD):
        subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL, check=False)
    if CGROUP.exists():
        for pid in (CGROUP / "cgroup.procs").read_text().split():
            subprocess.run(["kill", "-9", pid], check=False)
        time.sleep(0.5)
        CGROUP.rmdir()


def default_burst(link: Link) -> int:
    """This bench's tbf bucket: max(16 KB, 10 ms at the rate) (its committed results were taken with it; between
    sequential requests the bucket refills, so a payload under about 16 KB crosses at the veth's speed)."""
    return max(16_000, int(link.bandwidth_bps / 8 / 100))


def packet_burst(link: Link) -> int:
    """A bucket of a couple of full frames, or 1 ms at the rate if more: every payload larger than that crosses
    at the shaped rate, as on a real link of that rate."""
    return max(2 * 1514, int(link.bandwidth_bps / 8 / 1000))


def shape(link: Link, delay_file: Path, change: bool = False, burst: int | None = None) -> None:
    """Rate both directions with tbf (a bucket of ``burst`` bytes, :func:`default_burst` unless given); half the
    RTT each way in the relay."""
    burst = default_burst(link) if burst is None else burst
    for ns, dev in ((NS_EDGE, VETH_EDGE), (NS_CLOUD, VETH_CLOUD)):
        verb = "change" if change else "replace"
        run("tc", "-n", ns, "qdisc", verb, "dev", dev, "root", "tbf", "rate", link.rate,
            "burst", str(burst), "latency", "2s")  # fmt: skip
    delay_file.write_text(f"{link.rtt_s * 1000 / 2}")


# --- processes ------------------------------------------------------------------------------------


class Processes:
    """The benchmark's children (cloud in its namespace, relay, edge in its cgroup), stopped edge first."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, command: list[str], *, netns: str | None = None, edge_cgroup: bool = False) -> None:
        if netns is not None:
            command = in_netns(netns, command)
        if edge_cgroup:
            command = ["sh", "-c", f'echo $$ > {CGROUP}/cgroup.procs && exec "$@"', "sh", *command]
        env = {"SPLITINFER_THREADS": "1", "SPLITINFER_LOG_LEVEL": "info"}
        self.running.append(spawn(command, log=self.logs / f"{name}.log", env=env, cwd=ROOT))

    def stop_all(self) -> None:
        stop_all(list(reversed(self.running)))
        self.running.clear()


def profile(model: str, images: Path, output: Path, *, edge: bool, repeats: int, weights: str = "none") -> Profile:
    command = [sys.executable, "-m", "splitinfer", "profile", "--model", model, "--weights", weights,
               "--threads", "1", "--images", str(images), "--repeats", str(repeats), "-o", str(output)]  # fmt: skip
    if edge:
        command = ["sh", "-c", f'echo $$ > {CGROUP}/cgroup.procs && exec "$@"', "sh", *command]
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return Profile.load(output)


# --- measurements ---------------------------------------------------------------------------------


def photo_like(seed: int, width: int = 1280, height: int = 960) -> bytes:
    """A camera-sized JPEG with a photo's amount of detail (smooth shapes plus sensor-like noise)."""
    picture = np.asarray(synthetic_image(width, height, seed), dtype=np.float32)
    noise = np.random.default_rng(seed).normal(0, 10, picture.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(picture + noise, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


class Edge:
    def __init__(self, images: list[bytes], port: int = EDGE_PORT) -> None:
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=180)
        self.images = images
        self.sent = 0

    def classify(self, cut: str | None = None, codec: str | None = None) -> tuple[float, httpx.Response]:
        params = {k: v for k, v in (("cut", cut), ("codec", codec)) if v is not None}
        image = self.images[self.sent % len(self.images)]
        self.sent += 1
        started = time.perf_counter()
        response = self.client.post(
            "/v1/classify", params=params, content=image, headers={"Content-Type": "image/jpeg"}
        )
        return (time.perf_counter() - started) * 1000, response

    def median_ms(self, requests: int, cut: str | None = None, codec: str | None = None) -> tuple[float, list[str]]:
        samples, cuts = [], []
        for _ in range(requests):
            ms, response = self.classify(cut, codec)
            response.raise_for_status()
            samples.append(ms)
            cuts.append(response.json()["cut"])
        return statistics.median(samples), cuts

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = self.client.get("/v1/info").json()
        return info


def per_cut_rows(
    edge: Profile, cloud: Profile, link: Link, edge_calibration_ms: float = 0.0, cloud_calibration_ms: float = 0.0
) -> list[Any]:
    """The planner's best codec for every cut on this link, best cut first."""
    rows, seen = [], set()
    overheads = {"edge_calibration_ms": edge_calibration_ms, "cloud_calibration_ms": cloud_calibration_ms}
    for row in plan(edge, cloud, bandwidth_bps=link.bandwidth_bps, rtt_s=link.rtt_s, objective="latency", **overheads):
        if row.cut not in seen:
            seen.add(row.cut)
            rows.append(row)
    return rows


def measure_auto(edge_client: Edge, requests: int, settle_s: float) -> dict[str, Any]:
    """``auto`` after ``settle_s`` of sequential traffic on the link (it explores near-ties meanwhile),
    then measured interleaved with ``input`` and ``output`` pinned, so that the three are compared in
    one window of time."""
    settle_until = time.monotonic() + settle_s
    while time.monotonic() < settle_until:
        edge_client.median_ms(1)
    samples: dict[str, list[float]] = {"auto": [], "input": [], "output": []}
    auto_cuts = []
    orders = list(itertools.permutations(samples))
    for round_ in range(requests):
        # NOTE: each round takes the next of the six orders: a request right after a heavy one (output,
        # on the CPU-capped edge) is slower, so no kind may always follow the same one.
        for kind in orders[round_ % len(orders)]:
            ms, cuts = edge_client.median_ms(1, None if kind == "auto" else kind)
            samples[kind].append(ms)
            if kind == "auto":
                auto_cuts += cuts
    info = edge_client.info()
    selection = info["cut_selection"]
    # NOTE: the pick is the current cut; some of auto's requests may have explored others meanwhile.
    auto_ms, chosen = statistics.median(samples["auto"]), info["cut"]["name"]
    print(
        f"    {'auto':>28} {chosen}/{info['codec']}  measured {auto_ms:8.1f} ms (input "
        f"{statistics.median(samples['input']):.1f}, output {statistics.median(samples['output']):.1f}); "
        f"estimate {selection['estimated_link']}"
    )
    return {
        "measured_ms": round(auto_ms, 2),
        "input_ms": round(statistics.median(samples["input"]), 2),
        "output_ms": round(statistics.median(samples["output"]), 2),
        "cuts": dict(Counter(auto_cuts)),
        "cut": chosen,
        "codec": None if chosen == "output" else info["codec"],
        "estimated_link": selection["estimated_link"],
        "expected_ms": selection["expected_latency_ms"],
        "measured_routes": selection["measured_routes"],
        "switches": selection["switches"],
    }


def _live_model(edge_client: Edge) -> dict[str, float]:
    """What ``auto`` plans with now (/v1/info): the link the edge estimated and each side's calibration."""
    selection = edge_client.info()["cut_selection"]
    calibration, estimated = selection["calibration"], selection["estimated_link"]
    return {
        "bandwidth_bps": estimated["bandwidth_bps"],
        "rtt_s": estimated["rtt_ms"] / 1000,
        "edge_calibration_ms": calibration["edge_calibration_ms"],
        "cloud_calibration_ms": calibration["cloud_calibration_ms"],
    }


def measure_link(
    edge_client: Edge, edge: Profile, cloud: Profile, link: Link, requests: int, settle_s: float
) -> dict[str, Any]:
    """``auto`` first (after ``settle_s`` on the link), then every cut pinned per request (with the codec
    the profiles alone prefer for it).

    Predictions: ``profile_only_ms`` from the two profiles and the nominal link; ``predicted_ms`` from
    the edge's live model, what ``auto`` plans with: the link it estimated and each side's compute
    corrected by what it measured on real requests, read from /v1/info right after ``auto``'s own
    requests and *before* the pinned requests whose times it predicts (out of sample). ``live_model_after``
    is the same model read after the pinned requests, which teach the edge the link (and, before commit
    ae308e4, its compute calibration too): predictions from it would be fitted in part to the very
    measurements they are compared with.
    """
    auto = measure_auto(edge_client, requests, settle_s)
    live = _live_model(edge_client)  # NOTE: before the pinned sweep, so the prediction is out of sample
    rows = per_cut_rows(edge, cloud, link)
    order = [c.name for c in edge.cuts]
    measured_by_cut = {}
    for row in sorted(rows, key=lambda r: order.index(r.cut)):
        codec = row.codec
        edge_client.median_ms(1, row.cut, codec)  # warm-up: first use of a route builds its split
        measured_by_cut[row.cut], _ = edge_client.median_ms(requests, row.cut, codec)
    live_after = _live_model(edge_client)
    live_rows = {(r.cut, r.codec): r for r in plan(edge, cloud, **live)}
    fixed = []
    for row in sorted(rows, key=lambda r: order.index(r.cut)):
        predicted = live_rows[(row.cut, row.codec)]
        measured = measured_by_cut[row.cut]
        fixed.append(
            {
                "cut": row.cut,
                "codec": row.codec,
                "profile_only_ms": round(row.latency_ms, 2),
                "predicted_ms": round(predicted.latency_ms, 2),
                "measured_ms": round(measured, 2),
                "bytes": round(row.bytes_per_image),
            }
        )
        print(
            f"    {row.cut:>28} {row.codec or '-':>10}  profiles {row.latency_ms:8.1f}  live model "
            f"{predicted.latency_ms:8.1f}  measured {measured:8.1f} ms"
        )
    planned = min(live_rows.values(), key=lambda r: r.latency_ms)
    confirmed = confirm(edge_client, fixed, [auto["cut"], planned.cut], requests)
    return {
        "link": link.name,
        "fixed": fixed,
        "live_model": live,
        "live_model_read": "after auto's requests, before the pinned sweep",
        "live_model_after": live_after,
        "planned_cut": planned.cut,
        "planned_codec": planned.codec,
        "auto": auto,
        "confirmed": confirmed,
    }


def confirm(edge_client: Edge, fixed: list[dict[str, Any]], picks: list[str], requests: int) -> dict[str, float]:
    """The sweep's three fastest cuts and the picked ones, measured again, interleaved in shuffled order.

    The fastest of some thirty cuts measured once each is partly the luckiest; measured again, side by
    side with the picks, the comparison is between equals and in one window of time.
    """
    by_cut = {r["cut"]: r for r in fixed}
    contenders = [r["cut"] for r in sorted(fixed, key=lambda r: r["measured_ms"])[:3]]
    contenders += [cut for cut in dict.fromkeys(picks) if cut in by_cut and cut not in contenders]
    samples: dict[str, list[float]] = {cut: [] for cut in contenders}
    for round_ in range(requests):
        order = list(contenders)
        random.Random(round_).shuffle(order)
        for cut in order:
            codec = by_cut[cut]["codec"]
            samples[cut].append(edge_client.median_ms(1, cut, codec)[0])
    confirmed = {cut: round(statistics.median(ms), 2) for cut, ms in samples.items()}
    print(f"    confirmed: {confirmed}")
    return confirmed


def switch_experiment(edge_client: Edge, edge: Profile, cloud: Profile, delay_file: Path) -> dict[str, Any]:
    """Lower the rate mid-run; record when the edge moves its cut and whether any request failed."""
    low = Link("5mbit", "20ms")
    low_cut = per_cut_rows(edge, cloud, low)[0].cut
    start = next(
        (
            Link(rate, "20ms")
            for rate in ("50mbit", "1gbit")
            if per_cut_rows(edge, cloud, Link(rate, "20ms"))[0].cut != low_cut
        ),
        Link("1gbit", "20ms"),
    )
    shape(start, delay_file)
    # Settle: until the edge has left the cut planned for the lower rate (it may be there from the
    # previous link), at least 20 s, at most 90 s.
    started = time.monotonic()
    while time.monotonic() - started < 90:
        edge_client.median_ms(1)
        if time.monotonic() - started >= 20 and edge_client.info()["cut"]["name"] != low_cut:
            break
    before = edge_client.info()
    events: list[dict[str, Any]] = []
    stop = threading.Event()
    origin = time.monotonic()

    def load() -> None:
        client = Edge(edge_client.images)
        while not stop.is_set():
            ms, response = client.classify()
            events.append(
                {
                    "t": round(time.monotonic() - origin, 3),
                    "status": response.status_code,
                    "ms": round(ms, 1),
                    "cut": response.json().get("cut") if response.status_code == 200 else None,
                }
            )

    workers = [threading.Thread(target=load) for _ in range(2)]
    for worker in workers:
        worker.start()
    time.sleep(10)
    changed_at = time.monotonic() - origin
    shape(low, delay_file, change=True)
    moved_at = None
    while time.monotonic() - origin < changed_at + 45:
        info = edge_client.info()
        if moved_at is None and info["cut_selection"]["switches"] > before["cut_selection"]["switches"]:
            moved_at = time.monotonic() - origin
        time.sleep(0.25)
    stop.set()
    for worker in workers:
        worker.join()
    after = edge_client.info()
    return {
        "from_link": start.name,
        "to_link": low.name,
        "cut_before": before["cut"]["name"],
        "codec_before": before["codec"],
        "cut_after": after["cut"]["name"],
        "codec_after": after["codec"],
        "planned_after": low_cut,
        "settled_s": round(origin - started, 1),
        "rate_lowered_at_s": round(changed_at, 2),
        "moved_after_s": None if moved_at is None else round(moved_at - changed_at, 2),
        "requests": len(events),
        "failed": sum(1 for e in events if e["status"] != 200),
        "recent_switches": after["cut_selection"]["recent_switches"],
    }


def summarize(models: dict[str, Any]) -> dict[str, Any]:
    errors, raw_errors, checks = [], [], []
    for model, data in models.items():
        for result in data["links"]:
            fixed = result["fixed"]
            errors += [abs(r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"] for r in fixed]
            raw_errors += [abs(r["profile_only_ms"] - r["measured_ms"]) / r["measured_ms"] for r in fixed]
            best = min(fixed, key=lambda r: r["measured_ms"])
            planned = next(r for r in fixed if r["cut"] == result["planned_cut"])  # measured with its best codec
            auto = result["auto"]
            extremes = min(auto["input_ms"], auto["output_ms"])  # measured interleaved with auto
            # The cut auto picks against the best, both pinned (with the codec of the sweep) and measured
            # again side by side with the sweep's fastest (see confirm()).
            confirmed = result["confirmed"]
            best_confirmed = min(confirmed, key=confirmed.__getitem__)
            picked_ms = confirmed.get(auto["cut"], auto["measured_ms"])
            checks.append(
                {
                    "model": model,
                    "link": result["link"],
                    "planned": f"{planned['cut']}/{planned['codec']}",
                    "planned_ms": planned["measured_ms"],
                    "best": f"{best['cut']}/{best['codec']}",
                    "best_ms": best["measured_ms"],
                    "planned_vs_best": round(planned["measured_ms"] / best["measured_ms"], 3),
                    "confirmed_best": best_confirmed,
                    "confirmed_best_ms": confirmed[best_confirmed],
                    "confirmed_planned_vs_best": round(
                        confirmed.get(result["planned_cut"], planned["measured_ms"]) / confirmed[best_confirmed], 3
                    ),
                    "auto": auto["cut"],
                    "auto_ms": auto["measured_ms"],
                    "picked_ms": picked_ms,
                    "auto_vs_best": round(picked_ms / confirmed[best_confirmed], 3),
                    "better_extreme_ms": extremes,
                    "auto_vs_extremes": round(auto["measured_ms"] / extremes, 3),
                    "median_prediction_error": round(
                        statistics.median(abs(r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"] for r in fixed),
                        3,
                    ),
                }
            )
    return {
        "median_prediction_error": round(statistics.median(errors), 3),
        "median_profile_only_error": round(statistics.median(raw_errors), 3),
        "per_link": checks,
    }


def start_cloud_and_relay(processes: Processes, model: str, weights: str, delay_file: Path) -> None:
    """The cloud in its namespace, and the delaying relay to it in the edge's (edges connect to the relay)."""
    python = sys.executable
    processes.start(
        f"{model}-cloud",
        [python, "-m", "splitinfer", "cloud", "--model", model, "--weights", weights,
         "--host", CLOUD_IP, "--port", str(CLOUD_PORT)],
        netns=NS_CLOUD,
    )  # fmt: skip
    processes.start(
        f"{model}-relay",
        [python, str(ROOT / "bench/delay_relay.py"), "--listen", f"127.0.0.1:{RELAY_PORT}",
         "--upstream", f"{CLOUD_IP}:{CLOUD_PORT}", "--delay-file", str(delay_file)],
    )  # fmt: skip


# --- the run --------------------------------------------------------------------------------------


def inside(args: argparse.Namespace) -> None:
    """The measurement, run inside the si-edge namespace (the edge, the relay and this client live there)."""
    work = Path(args.work)
    images_dir = work / "images"
    images_dir.mkdir(exist_ok=True)
    images = [photo_like(seed) for seed in range(4)]
    for i, image in enumerate(images):
        (images_dir / f"photo-{i}.jpg").write_bytes(image)
    delay_file = work / "delay_ms"
    delay_file.write_text("0")
    links = LINKS
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "edge_cpu": args.edge_cpu,
        "images": {"count": len(images), "size": "1280x960", "mean_bytes": round(statistics.fmean(map(len, images)))},
        "requests_per_point": args.requests,
        "auto_settle_s": args.settle_s,
        "models": {},
    }
    processes = Processes(work)
    for model in args.models:
        print(f"{model}: profiling the edge (cgroup, {args.edge_cpu:.0%} of a core) and the cloud")
        edge_profile = profile(model, images_dir, work / f"{model}-edge.json", edge=True, repeats=args.repeats)
        cloud_profile = profile(model, images_dir, work / f"{model}-cloud.json", edge=False, repeats=args.repeats)
        python = sys.executable
        try:
            start_cloud_and_relay(processes, model, "none", delay_file)
            processes.start(
                f"{model}-edge",
                [python, "-m", "splitinfer", "edge", "--model", model, "--weights", "none", "--host", "127.0.0.1",
                 "--port", str(EDGE_PORT), "--cut", "auto", "--edge-profile", str(work / f"{model}-edge.json"),
                 "--cloud-profile", str(work / f"{model}-cloud.json"), "--cloud-url", f"http://127.0.0.1:{RELAY_PORT}",
                 "--read-timeout-s", "120", "--request-timeout-s", "180"],
                edge_cgroup=True,
            )  # fmt: skip
            shape(links[0], delay_file)
            client = Edge(images)
            wait_ready(f"http://127.0.0.1:{EDGE_PORT}/readyz", 300)
            per_link = []
            for link in links:
                print(f"  {link.name}")
                shape(link, delay_file)
                per_link.append(measure_link(client, edge_profile, cloud_profile, link, args.requests, args.settle_s))
            print("  lowering the rate during a run")
            switch = switch_experiment(client, edge_profile, cloud_profile, delay_file)
            print(f"    {switch}")
            results["models"][model] = {
                "edge_profile": {"machine": edge_profile.machine, "image_decode_ms": edge_profile.image_decode_ms},
                "links": per_link,
                "switch": switch,
            }
        finally:
            processes.stop_all()
    results["summary"] = summarize(results["models"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["summary"], indent=2))
    print(f"wrote {RESULTS}")


@contextmanager
def testbed(edge_cpu: float) -> Any:
    setup(edge_cpu)
    try:
        yield
    finally:
        teardown()


def root_work_directory(script: str, prefix: str) -> str:
    """Exit unless this runs as root with iproute2 and nsenter (the testbed needs them); else a new work
    directory, kept afterwards (the services' logs are there)."""
    if os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("ip", "tc", "nsenter")):
        sys.exit(f"{script} needs root, iproute2 (ip, tc) and nsenter")
    work = tempfile.mkdtemp(prefix=prefix)
    print(f"work directory: {work}")
    return work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="resnet18 only, 3 requests per point")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--requests", type=int, default=7, help="sequential requests per (link, cut)")
    parser.add_argument("--repeats", type=int, default=5, help="profile repeats per measurement")
    parser.add_argument("--edge-cpu", type=float, default=0.25, help="the edge's CPU quota, in cores")
    parser.add_argument("--settle-s", type=float, default=30.0, help="traffic through auto before measuring it")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.models, args.requests, args.repeats, args.settle_s = ["resnet18"], 3, 2, 10.0
    if args.inside:
        inside(args)
        return
    work = root_work_directory("bench/netlink.py", "si-netlink-")
    with testbed(args.edge_cpu):
        command = [sys.executable, str(Path(__file__).resolve()), "--inside", "--work", work,
                   "--models", *args.models, "--requests", str(args.requests), "--repeats", str(args.repeats),
                   "--edge-cpu", str(args.edge_cpu), "--settle-s", str(args.settle_s)]  # fmt: skip
        subprocess.run(in_netns(NS_EDGE, command), check=True)


if __name__ == "__main__":
    main()
