"""The emulated 5 Mbit/s + 50 ms link: ``--cut auto`` with issue 16's codecs against today's best, side by side.

    sudo PYTHONPATH=. .venv/bin/python bench/netlink_codecs.py                     # about 20 minutes on 2 cores
    sudo PYTHONPATH=. .venv/bin/python bench/netlink_codecs.py --quick --no-doc    # a smoke run

The testbed is bench/netlink.py's (imported, not copied): namespaces ``si-edge``/``si-cloud``, ``tc tbf``
at 5 Mbit/s (with a bucket of two frames, :func:`bench.netlink.packet_burst`, not netlink.py's 16 KB under
which a payload of up to 16 KB crosses at the veth's speed), the delaying relay adding 50 ms of RTT, the
edge's cgroup at ``--edge-cpu`` of one core. Per model it profiles the edge (in the cgroup: its times are
taken as under that quota, see ``shared.planning.profile_model``) and the cloud once
(``shared.planning.PROFILE_CODECS``), then
starts one cloud and TWO edges with ``--cut auto`` in the same cgroup, through the same relay and link:

* ``old``: today's best, the planner given only the codecs that existed before issue 16 (``fp32``,
  ``fp16``, ``int8+zstd`` and the input cut's ``image``): a copy of both profiles without the others;
* ``new``: the full profiles, the new ``int6+ans``, ``budgetN+ans`` and ``dctN+ans`` included.

Both get ``--settle-s`` of sequential traffic, request by request in turn (auto explores near-ties
meanwhile), then ``--requests`` each, interleaved ABBA on the same camera-like JPEGs. Recorded: median and
p90 latency, the cut and codec each settled on (and every route its requests took), payload bytes per
request, and top-1 agreement with the unsplit model (the edge with ``cut=output``, asked afterwards).
Writes bench/results/netlink_codecs.json and the section ``netlink-codecs`` of docs/benchmarks.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("GOMP_SPINCOUNT", "0")  # NOTE: every process of the testbed, both sides alike (2 cores)

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.doc_section import write_section
from bench.netlink import (
    EDGE_PORT,
    NS_EDGE,
    RELAY_PORT,
    Edge,
    Link,
    Processes,
    in_netns,
    packet_burst,
    photo_like,
    profile,
    root_work_directory,
    shape,
    start_cloud_and_relay,
    testbed,
)
from shared.planning import Profile, plan
from splitinfer.processes import wait_ready

__all__ = ["OLD_CODECS", "main", "restrict_codecs"]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench/results/netlink_codecs.json"
LINK = Link("5mbit", "50ms")
OLD_CODECS = frozenset({"fp32", "fp16", "int8+zstd", "image"})
"""The codecs a profile measured before issue 16 (``image``: the input cut's)."""
OLD_EDGE_PORT = EDGE_PORT + 2  # NOTE: the cloud listens on EDGE_PORT + 1, in the other namespace
MODELS = {"efficientnet_lite0": "DEFAULT", "resnet18": "none"}
"""Model and weights: efficientnet_lite0's DEFAULT are its real packaged ImageNet weights (offline)."""


def restrict_codecs(profile_: Profile, codecs: frozenset[str]) -> Profile:
    """A copy of ``profile_`` that knows only ``codecs`` at every cut (what the planner may choose from)."""
    cuts = [replace(cut, codecs=tuple(c for c in cut.codecs if c.codec in codecs)) for cut in profile_.cuts]
    return replace(profile_, cuts=cuts)


def planned(edge: Profile, cloud: Profile) -> dict[str, Any]:
    """What the profiles alone pick on the nominal link (before the edge measures anything)."""
    best = plan(edge, cloud, bandwidth_bps=LINK.bandwidth_bps, rtt_s=LINK.rtt_s)[0]
    return {"cut": best.cut, "codec": best.codec, "ms": round(best.latency_ms, 1), "bytes": round(best.bytes_per_image)}


def start_services(processes: Processes, model: str, weights: str, work: Path, delay_file: Path) -> None:
    python = sys.executable
    start_cloud_and_relay(processes, model, weights, delay_file)
    for side, port in (("new", EDGE_PORT), ("old", OLD_EDGE_PORT)):
        processes.start(
            f"{model}-edge-{side}",
            [python, "-m", "splitinfer", "edge", "--model", model, "--weights", weights, "--host", "127.0.0.1",
             "--port", str(port), "--cut", "auto", "--edge-profile", str(work / f"{model}-edge-{side}.json"),
             "--cloud-profile", str(work / f"{model}-cloud-{side}.json"),
             "--cloud-url", f"http://127.0.0.1:{RELAY_PORT}", "--link-bandwidth", LINK.rate, "--link-rtt", LINK.rtt,
             "--read-timeout-s", "120", "--request-timeout-s", "180"],
            edge_cgroup=True,
        )  # fmt: skip
    for port in (EDGE_PORT, OLD_EDGE_PORT):
        wait_ready(f"http://127.0.0.1:{port}/readyz", 300, processes.running)


class Side:
    """One edge's requests: latency, the route each took, payload bytes and top-1 per image."""

    def __init__(self, name: str, edge: Edge) -> None:
        self.name, self.edge = name, edge
        self.ms: list[float] = []
        self.routes: list[str] = []
        self.payload_bytes: list[int] = []
        self.top1: list[tuple[int, int]] = []  # (image index, class index)

    def request(self, record: bool) -> None:
        image = self.edge.sent % len(self.edge.images)
        ms, response = self.edge.classify()
        response.raise_for_status()
        body = response.json()
        if record:
            self.ms.append(ms)
            self.routes.append(f"{body['cut']}/{body['codec']}")
            self.payload_bytes.append(body["payload_bytes"])
            self.top1.append((image, body["predictions"][0]["index"]))

    def summary(self, reference: dict[int, int]) -> dict[str, Any]:
        info = self.edge.info()
        selection = info["cut_selection"]
        agree = [reference[image] == top1 for image, top1 in self.top1]
        return {
            "median_ms": round(statistics.median(self.ms), 1),
            "p90_ms": round(statistics.quantiles(self.ms, n=10, method="inclusive")[-1], 1),
            "samples_ms": [round(ms, 1) for ms in self.ms],
            "settled": f"{info['cut']['name']}/{info['codec']}",
            "routes": dict(Counter(self.routes)),
            "route_median_ms": {
                route: round(statistics.median(ms for r, ms in zip(self.routes, self.ms, strict=True) if r == route), 1)
                for route in dict.fromkeys(self.routes)
            },
            "median_payload_bytes": round(statistics.median(self.payload_bytes)),
            "top1_agreement": round(sum(agree) / len(agree), 3),
            "estimated_link": selection["estimated_link"],
            "expected_ms": selection["expected_latency_ms"],
            "switches": selection["switches"],
        }


def settle_and_measure(old: Side, new: Side, settle_s: float, requests: int) -> None:
    """``settle_s`` of traffic through both in turn, then ``requests`` each in ABBA order (old, new, new, old, ...)."""
    settle_until = time.monotonic() + settle_s
    while time.monotonic() < settle_until:
        for side in (old, new):
            side.request(record=False)
    for round_ in range(requests):
        for side in (old, new) if round_ % 2 == 0 else (new, old):
            side.request(record=True)


def unsplit_top1(edge: Edge) -> dict[int, int]:
    """Top-1 of the unsplit model (the edge running it whole: ``cut=output``) on every image."""
    top1 = {}
    for index, image in enumerate(edge.images):
        response = edge.client.post(
            "/v1/classify", params={"cut": "output"}, content=image, headers={"Content-Type": "image/jpeg"}
        )
        response.raise_for_status()
        top1[index] = response.json()["predictions"][0]["index"]
    return top1


def run_model(model: str, weights: str, args: argparse.Namespace, work: Path, images: list[bytes]) -> dict[str, Any]:
    started = time.monotonic()
    images_dir = work / "images"
    print(f"{model} ({weights} weights): profiling the edge (cgroup, {args.edge_cpu:.0%} of a core) and the cloud")
    edge_profile = profile(
        model, images_dir, work / f"{model}-edge-new.json", edge=True, repeats=args.repeats, weights=weights
    )
    cloud_profile = profile(
        model, images_dir, work / f"{model}-cloud-new.json", edge=False, repeats=args.repeats, weights=weights
    )
    profiled_s = time.monotonic() - started
    old_edge, old_cloud = restrict_codecs(edge_profile, OLD_CODECS), restrict_codecs(cloud_profile, OLD_CODECS)
    old_edge.save(work / f"{model}-edge-old.json")
    old_cloud.save(work / f"{model}-cloud-old.json")
    plans = {"old": planned(old_edge, old_cloud), "new": planned(edge_profile, cloud_profile)}
    print(f"  profiles' picks on {LINK.name}: {plans}")
    delay_file = work / "delay_ms"
    shape(LINK, delay_file, burst=packet_burst(LINK))
    processes = Processes(work)
    try:
        start_services(processes, model, weights, work, delay_file)
        old = Side("old", Edge(images, OLD_EDGE_PORT))
        new = Side("new", Edge(images, EDGE_PORT))
        settle_and_measure(old, new, args.settle_s, args.requests)
        reference = unsplit_top1(new.edge)
        sides = {"old": old.summary(reference), "new": new.summary(reference)}
    finally:
        processes.stop_all()
    ratio = sides["new"]["median_ms"] / sides["old"]["median_ms"]
    pairs = list(zip(old.ms, new.ms, strict=True))
    result = {
        "weights": "real (packaged ImageNet)" if weights == "DEFAULT" else "random (seed 0)",
        "profiled_codecs": sorted({c.codec for cut in edge_profile.cuts for c in cut.codecs}),
        "profile_s": round(profiled_s),
        "edge_profile_cpu_quota": edge_profile.cpu_quota,
        "profiles_pick": plans,
        "old": sides["old"],
        "new": sides["new"],
        "new_over_old_median": round(ratio, 3),
        "new_faster_in_pairs": round(sum(n < o for o, n in pairs) / len(pairs), 3),
        "new_faster": ratio < 1,
        "elapsed_s": round(time.monotonic() - started),
    }
    print(f"  old {sides['old']['settled']} {sides['old']['median_ms']} ms, new {sides['new']['settled']} "
          f"{sides['new']['median_ms']} ms: new/old {ratio:.3f}")  # fmt: skip
    return result


def _route(pick: dict[str, Any]) -> str:
    return f"`{pick['cut']}`" if pick["codec"] is None else f"`{pick['cut']}/{pick['codec']}`"


def _same_route_note(data: dict[str, Any]) -> str:
    """Said when both settled on one route: their difference is then two edges' noise, not the codecs'."""
    if data["old"]["settled"] != data["new"]["settled"]:
        return ""
    return (
        f" Both settled on the same route, `{data['old']['settled']}`: the difference is between two edges "
        "running the same route (the noise floor of this comparison), not the codecs'."
    )


def markdown(results: dict[str, Any]) -> str:
    profiled = {codec for data in results["models"].values() for codec in data["profiled_codecs"]}
    added = ", ".join(f"`{codec}`" for codec in sorted(profiled - OLD_CODECS))
    lines = [
        f"Command: `{results['command']}`. {results['date']}, load average before/after "
        f"{results['load_average']['before']} / {results['load_average']['after']}, {results['elapsed_s']} s in all. "
        "Raw numbers: `bench/results/netlink_codecs.json`.",
        "",
        f"Link {LINK.name} (bench/netlink.py's testbed: `tc tbf` rate, delaying relay), with a tbf bucket of "
        f"{results.get('tbf_burst_bytes', 16_000):,} B"
        + (
            " (two frames: a payload crosses at the link's rate, as on a real link; `bench/netlink.py` itself uses "
            "16 KB, under which a payload crosses at the veth's speed between sequential requests, "
            "`bench/results/tbf_burst.txt`)"
            if "tbf_burst_bytes" in results
            else " (bench/netlink.py's default: a payload under about 16 KB crosses at the veth's speed)"
        )
        + "; the edge capped at "
        f"{results['edge_cpu']:.0%} of a core, one torch thread each process. One cloud, two edges with `--cut auto` "
        "in that one cgroup (one request at a time), through the same relay: **old** = the planner given only the "
        "codecs that existed "
        "before issue 16 (`fp32`, `fp16`, `int8+zstd`, `image` at the input cut; a copy of both profiles "
        f"without the rest), **new** = the full profiles ({added} too; the default `--max-logit-error` 1 % guard). "
        f"Images: {results['images']}. {results['settle_s']:g} s of traffic through both in turn to settle "
        f"(auto explores), then {results['requests']} requests each, interleaved ABBA. Top-1: agreement "
        "with the unsplit model (the same edge, `cut=output`) on the measured requests.",
        "",
        "| model | weights | side | settled on | routes of the measured requests (their median) | payload B "
        "| median ms | p90 ms | top-1 |",
        "|---|---|---|---|---|---:|---:|---:|---:|",
    ]
    for model, data in results["models"].items():
        for side in ("old", "new"):
            s = data[side]
            routes = ", ".join(
                f"`{r}` x{n} ({s['route_median_ms'][r]:.0f} ms)"
                for r, n in sorted(s["routes"].items(), key=lambda kv: -kv[1])
            )
            lines.append(
                f"| {model} | {data['weights']} | {side} | `{s['settled']}` | {routes} | "
                f"{s['median_payload_bytes']:,} | {s['median_ms']:.1f} | {s['p90_ms']:.1f} "
                f"| {s['top1_agreement']:.0%} |"
            )
    lines.append("")
    quotas = {data.get("edge_profile_cpu_quota") for data in results["models"].values()}
    if quotas != {None}:
        lines += [
            "The edge's profile was timed as under its CPU quota ("
            + ", ".join(f"{q:g}" for q in sorted(q for q in quotas if q is not None))
            + " cores, read from its cgroup): each time is the longer of wall time and CPU time over the quota "
            "(a short encode timed alone fits in one period's quota and looks 4x faster than a request sees it).",
            "",
        ]
    for model, data in results["models"].items():
        verdict = "yes" if data["new_faster"] else "no"
        lines.append(
            f"- **{model}: new codecs faster than today's best: {verdict}** ({data['new_over_old_median']:.3f}x the "
            f"median latency; new faster in {data['new_faster_in_pairs']:.0%} of the ABBA pairs). The profiles alone "
            f"picked {_route(data['profiles_pick']['old'])} (old) and {_route(data['profiles_pick']['new'])} (new)."
            + _same_route_note(data)
        )
    return "\n".join(lines) + "\n"


def inside(args: argparse.Namespace) -> None:
    """The measurement, run inside the si-edge namespace (the edges, the relay and this client live there)."""
    started = time.monotonic()
    work = Path(args.work)
    images_dir = work / "images"
    images_dir.mkdir(exist_ok=True)
    images = [photo_like(seed) for seed in range(args.images)]
    for i, image in enumerate(images):
        (images_dir / f"photo-{i}.jpg").write_bytes(image)
    (work / "delay_ms").write_text("0")
    results: dict[str, Any] = {
        "command": args.command,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average": {"before": " ".join(f"{x:.2f}" for x in os.getloadavg())},
        "link": LINK.name,
        "tbf_burst_bytes": packet_burst(LINK),
        "edge_cpu": args.edge_cpu,
        "images": f"{len(images)} camera-like 1280x960 JPEGs (~{statistics.fmean(map(len, images)) / 1000:.0f} KB)",
        "requests": args.requests,
        "settle_s": args.settle_s,
        "repeats": args.repeats,
        "models": {},
    }
    for model in args.models:
        results["models"][model] = run_model(model, MODELS[model], args, work, images)
    results["load_average"]["after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results["elapsed_s"] = round(time.monotonic() - started)
    output = Path(args.out)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    if not args.no_doc:
        write_section("netlink-codecs", "netlink_codecs.py", markdown(results))
    print(f"wrote {output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 requests, 2 profile repeats, 10 s settle")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=sorted(MODELS))
    parser.add_argument("--requests", type=int, default=25, help="measured requests per edge")
    parser.add_argument("--repeats", type=int, default=3, help="profile repeats per measurement")
    parser.add_argument("--images", type=int, default=4, help="camera-like JPEGs (requests cycle through them)")
    parser.add_argument("--edge-cpu", type=float, default=0.25, help="the edges' CPU quota, in cores")
    parser.add_argument("--settle-s", type=float, default=60.0, help="traffic through both autos before measuring")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--no-doc", action="store_true", help="leave docs/benchmarks.md as it is")
    parser.add_argument("--doc-from", metavar="JSON", help="only rewrite the doc section from a results file")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--command", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.requests, args.repeats, args.settle_s = 4, 2, 10.0
    if args.doc_from:
        write_section("netlink-codecs", "netlink_codecs.py", markdown(json.loads(Path(args.doc_from).read_text())))
        return
    if args.inside:
        inside(args)
        return
    work = root_work_directory("bench/netlink_codecs.py", "si-netlink-codecs-")
    command = " ".join(["sudo PYTHONPATH=. .venv/bin/python bench/netlink_codecs.py", shlex.join(sys.argv[1:])]).strip()
    with testbed(args.edge_cpu):
        inner = [sys.executable, "-m", "bench.netlink_codecs", "--inside", "--work", work, "--command", command,
                 "--models", *args.models, "--requests", str(args.requests), "--repeats", str(args.repeats),
                 "--images", str(args.images), "--edge-cpu", str(args.edge_cpu), "--settle-s", str(args.settle_s),
                 "--out", args.out, *(["--no-doc"] if args.no_doc else [])]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        subprocess.run(in_netns(NS_EDGE, inner), check=True, cwd=ROOT, env=env)


if __name__ == "__main__":
    main()
