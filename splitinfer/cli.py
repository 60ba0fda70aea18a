"""``splitinfer``: the project's command line."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from splitinfer.settings_flags import add_settings_flags, settings_from_args

__all__ = ["main"]

EDGE_URL = "http://127.0.0.1:8000"
CLOUD_URL = "http://127.0.0.1:8001"


def _cmd_cuts(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from shared.models import load_model
    from shared.splitting import ModelGraph

    loaded = load_model(args.model, args.weights)
    size = args.input_size or loaded.preprocessor.crop_size
    graph = ModelGraph(loaded.module, (1, 3, size, size))
    cuts = graph.single_tensor_cuts() if args.single else graph.cuts
    if args.json:
        print(json.dumps({"model": args.model, "input_size": size, "cuts": [c.to_json() for c in cuts]}, indent=2))
        return 0
    table = Table(
        title=f"{args.model} ({size}x{size}): {len(graph.cuts)} cuts, {len(graph.single_tensor_cuts())} single-tensor"
    )
    for column in ("#", "cut", "tensors alive", "KiB fp32", "head FLOPs"):
        table.add_column(column, justify="right" if column in ("#", "KiB fp32", "head FLOPs") else "left")
    for cut in cuts:
        shapes = " + ".join("x".join(str(d) for d in t.shape) for t in cut.tensors)
        table.add_row(str(cut.index), cut.name, shapes, f"{cut.bytes_fp32 / 1024:.1f}", f"{cut.head_flops_share:.1%}")
    Console(width=args.width).print(table)
    return 0


def _cmd_codecs(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from shared.models import load_model
    from shared.splitting import ModelGraph
    from splitinfer.fidelity import codec_report
    from splitinfer.samples import encode_image, synthetic_image

    loaded = load_model(args.model, args.weights)
    if args.images:
        paths = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"})
        jpegs = [p.read_bytes() for p in paths]
    else:
        jpegs = [encode_image(synthetic_image(seed=seed)) for seed in range(args.count)]
    if not jpegs:
        print("no images found", file=sys.stderr)
        return 2
    graph = ModelGraph(loaded.module, loaded.input_shape)
    codecs = args.codecs.split(",") if args.codecs else None
    rows = codec_report(loaded, graph, args.cut, jpegs, codecs=codecs, autocast=args.autocast)
    if args.json:
        print(json.dumps([r.to_json() for r in rows], indent=2))
        return 0
    cut = graph.cut(args.cut)
    autocast = ", tail under bf16 autocast" if args.autocast == "bf16" else ""
    table = Table(title=f"{args.model} at {cut.name}: {len(jpegs)} images, {cut.bytes_fp32} fp32 bytes/image{autocast}")
    headers = ("codec", "bytes/img", "vs fp32", "vs JPEG", "enc ms", "dec ms", "max |err|", "rel L2", "top-1", "top-5")
    for header in headers:
        table.add_column(header, justify="left" if header == "codec" else "right")
    for r in rows:
        table.add_row(
            r.codec,
            f"{r.bytes_per_image:,.0f}",
            f"{r.ratio_to_fp32:.3f}",
            f"{r.ratio_to_jpeg:.2f}",
            f"{r.encode_ms:.2f}",
            f"{r.decode_ms:.2f}",
            f"{r.max_abs_error:.2e}",
            f"{r.relative_l2_error:.2e}",
            f"{r.top1_agreement:.0%}",
            f"{r.top5_agreement:.0%}",
        )
    Console(width=args.width).print(table)
    return 0


def _cmd_cloud(args: argparse.Namespace) -> int:
    from cloud_service.app import create_app
    from cloud_service.settings import CloudSettings
    from splitinfer.serve import run_service

    settings = settings_from_args(CloudSettings, args)
    if settings.workers > 1:
        from splitinfer.workers import run_workers

        return run_workers(settings)
    run_service(create_app(settings), settings)
    return 0


def _cmd_edge(args: argparse.Namespace) -> int:
    from edge_service.app import create_app
    from edge_service.settings import EdgeSettings
    from splitinfer.serve import run_service

    settings = settings_from_args(EdgeSettings, args)
    run_service(create_app(settings), settings)
    return 0


def _pair_args(args: argparse.Namespace) -> tuple[list[str], list[str], list[str]]:
    common = ["--model", args.model, "--weights", args.weights, "--host", "127.0.0.1"]
    cloud = ["--port", str(args.cloud_port)]
    edge = ["--port", str(args.edge_port), "--cut", args.cut, "--cloud-url", f"http://127.0.0.1:{args.cloud_port}"]
    if args.codec:
        edge += ["--codec", args.codec]
    return common, cloud, edge


def _run_pair(args: argparse.Namespace, after_ready: Any = None) -> int:
    from splitinfer.serve import configure_logging, start_pair, stop_processes, wait_ready

    configure_logging("info")
    processes = start_pair(*_pair_args(args))
    stopping = False

    def stop(signum: int, _: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    try:
        wait_ready(f"http://127.0.0.1:{args.edge_port}/readyz", args.ready_timeout, processes)
        if after_ready is not None:
            after_ready()
        print(f"\nedge  http://127.0.0.1:{args.edge_port}  (docs: /docs)\ncloud http://127.0.0.1:{args.cloud_port}")
        print("Ctrl-C stops both.", flush=True)
        while not stopping and all(p.poll() is None for p in processes):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        print("\nstopping edge and cloud...", flush=True)
        stop_processes(processes)
    failed = [p.returncode for p in processes if p.returncode not in (0, -signal.SIGTERM)]
    return 1 if failed and not stopping else 0


def _cmd_up(args: argparse.Namespace) -> int:
    return _run_pair(args)


def _print_results(results: Sequence[tuple[str, dict[str, Any]]], width: int | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    for name, body in results:
        table = Table(
            title=f"{name}: {body['model']} ({body['weights']} weights), cut {body['cut']}, codec {body['codec']}, "
            f"{body['payload_bytes']} bytes sent, completed on {body['completed_on']}, "
            f"{body['timings_ms']['total']:.1f} ms"
        )
        for column in ("rank", "class", "label", "probability"):
            table.add_column(column, justify="left" if column == "label" else "right")
        for rank, p in enumerate(body["predictions"], 1):
            table.add_row(str(rank), str(p["index"]), p["label"], f"{p['probability']:.4f}")
        Console(width=width).print(table)


def _classify_files(edge_url: str, paths: Sequence[Path], top_k: int) -> list[tuple[str, dict[str, Any]]]:
    import httpx

    results = []
    with httpx.Client(base_url=edge_url, timeout=60) as client:
        for path in paths:
            response = client.post(
                "/v1/classify", params={"top_k": top_k}, files={"image": (path.name, path.read_bytes())}
            )
            if response.status_code != 200:
                raise RuntimeError(f"{path}: {response.status_code} {response.text}")
            results.append((path.name, response.json()))
    return results


def _cmd_classify(args: argparse.Namespace) -> int:
    try:
        results = _classify_files(args.edge_url, [Path(p) for p in args.images], args.top_k)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([body for _, body in results], indent=2))
    else:
        _print_results(results, args.width)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from splitinfer.samples import encode_image, synthetic_image

    sample = Path(tempfile.gettempdir()) / "splitinfer-sample.jpg"
    sample.write_bytes(encode_image(synthetic_image()))

    def classify_sample() -> None:
        _print_results(_classify_files(f"http://127.0.0.1:{args.edge_port}", [sample], 5))
        print(
            "\nTry it yourself:\n"
            f"  curl -s -F image=@{sample} 'http://127.0.0.1:{args.edge_port}/v1/classify?top_k=3'\n"
            f"  .venv/bin/splitinfer classify {sample}"
        )

    return _run_pair(args, classify_sample)


def _cmd_bench(args: argparse.Namespace) -> int:
    from rich.console import Console

    from splitinfer.bench import bench_images, run_target
    from splitinfer.loadgen import markdown_table

    if (args.duration is None) == (args.requests is None):
        args.duration = args.duration or 20.0
    images = bench_images(args.images, args.count)
    url = args.url or (CLOUD_URL if args.target == "cloud" else EDGE_URL)
    result = run_target(
        args.target,
        url=url,
        images=images,
        concurrency=args.concurrency,
        duration_s=args.duration if args.requests is None else None,
        requests=args.requests,
        warmup_s=args.warmup,
        name=args.name or f"{args.target} {url if args.target != 'local' else args.model}",
        model=args.model,
        weights=args.weights,
        cut=args.cut,
        codec=args.codec,
        per_request=args.per_request,
    )
    summary = result.summary()
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    if args.latencies:
        Path(args.latencies).write_text(json.dumps([round(ms, 3) for ms in result.latencies_ms]) + "\n")
    Console(width=args.width).print(markdown_table([summary]))
    return 1 if summary["errors"] else 0


def _cmd_profile(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from shared.models import load_model
    from shared.planning import profile_model
    from splitinfer.bench import bench_images

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, args.weights)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"profiling {args.model}", total=None)

        def progress(stage: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, description=f"profiling {args.model}: {stage}")

        started = time.perf_counter()
        profile = profile_model(
            loaded,
            bench_images(args.images, 4),
            device=args.device,
            all_cuts=args.all_cuts,
            repeats=args.repeats,
            progress=progress,
        )
    profile.save(args.output)
    elapsed = time.perf_counter() - started
    print(
        f"wrote {args.output}: {len(profile.cuts)} cuts of {args.model} on {args.device} in {elapsed:.1f} s "
        f"(whole model {profile.total_ms:.1f} ms, spread {profile.spread:.0%})"
    )
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from shared.planning import Profile, pareto, plan
    from shared.units import parse_bandwidth, parse_duration

    edge, cloud = Profile.load(args.edge_profile), Profile.load(args.cloud_profile)
    bandwidth, rtt = parse_bandwidth(args.bandwidth), parse_duration(args.rtt)
    rows = plan(
        edge, cloud, bandwidth_bps=bandwidth, rtt_s=rtt, objective=args.objective, max_logit_error=args.max_logit_error
    )
    front = {(r.cut, r.codec) for r in pareto(rows)}
    if args.json:
        print(json.dumps([r.to_json() | {"pareto": (r.cut, r.codec) in front} for r in rows], indent=2))
    else:
        table = Table(title=f"{edge.model}: {args.bandwidth}, RTT {args.rtt}, by {args.objective} (* Pareto)")
        for column in ("#", "cut", "codec", "latency ms", "edge ms", "link ms", "cloud ms", "bytes", "rel L2"):
            table.add_column(column, justify="left" if column in ("cut", "codec") else "right")
        for rank, r in enumerate(rows[: args.top], 1):
            star = "*" if (r.cut, r.codec) in front else ""
            table.add_row(
                f"{rank}{star}", r.cut, r.codec, f"{r.latency_ms:.1f}", f"{r.edge_ms:.1f}", f"{r.transfer_ms:.1f}",
                f"{r.cloud_ms:.1f}", f"{r.bytes_per_image:,.0f}", f"{r.relative_l2_error:.1e}",
            )  # fmt: skip
        Console(width=args.width).print(table)
    if args.plot:
        _plot(rows, args.plot, f"{edge.model}, {args.bandwidth}, RTT {args.rtt}")
    return 0


def _plot(rows: Sequence[Any], path: str, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot needs matplotlib: pip install 'split-inference[plot]'", file=sys.stderr)
        return
    order: dict[str, int] = {}
    for r in sorted(rows, key=lambda r: r.cut):
        order.setdefault(r.cut, len(order))
    figure, axes = plt.subplots(figsize=(10, 4))
    for codec in sorted({r.codec for r in rows}):
        points = sorted((order[r.cut], r.latency_ms) for r in rows if r.codec == codec)
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=codec)
    axes.set_xticks(range(len(order)), list(order), rotation=60, ha="right", fontsize=7)
    axes.set_ylabel("predicted latency (ms)")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"wrote {path}")


def _add_pair_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--weights", default="DEFAULT", help="DEFAULT falls back to seeded random weights offline")
    parser.add_argument("--cut", default="layer3")
    parser.add_argument("--codec", default=None)
    parser.add_argument("--edge-port", type=int, default=8000)
    parser.add_argument("--cloud-port", type=int, default=8001)
    parser.add_argument("--ready-timeout", type=float, default=300)


def build_parser() -> argparse.ArgumentParser:
    from cloud_service.settings import CloudSettings
    from edge_service.settings import EdgeSettings

    parser = argparse.ArgumentParser(prog="splitinfer", description=__doc__)
    parser.add_argument("--width", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    cuts = sub.add_parser("cuts", help="list every valid cut of a model")
    cuts.add_argument("model")
    cuts.add_argument("--weights", default="none")
    cuts.add_argument("--input-size", type=int, default=None)
    cuts.add_argument("--single", action="store_true", help="only cuts across which one tensor is alive")
    cuts.add_argument("--json", action="store_true")
    cuts.set_defaults(func=_cmd_cuts)

    codecs = sub.add_parser("codecs", help="payload size, speed and fidelity of every codec at one cut")
    codecs.add_argument("model")
    codecs.add_argument("--cut", required=True)
    codecs.add_argument("--weights", default="none")
    codecs.add_argument("--images", default=None, help="a folder of JPEG/PNG/WebP images (default: generated)")
    codecs.add_argument("--count", type=int, default=8, help="generated images when --images is not given")
    codecs.add_argument("--codecs", default=None, help="comma-separated codecs (default: every fixed one + compact)")
    codecs.add_argument("--autocast", choices=["none", "bf16"], default="none", help="run the tail as the cloud would")
    codecs.add_argument("--json", action="store_true")
    codecs.set_defaults(func=_cmd_codecs)

    cloud = sub.add_parser("cloud", help="run the cloud service")
    add_settings_flags(cloud, CloudSettings)
    cloud.set_defaults(func=_cmd_cloud)

    edge = sub.add_parser("edge", help="run the edge service")
    add_settings_flags(edge, EdgeSettings)
    edge.set_defaults(func=_cmd_edge)

    up = sub.add_parser("up", help="run cloud (:8001) and edge (:8000) on loopback")
    _add_pair_options(up)
    up.set_defaults(func=_cmd_up)

    demo = sub.add_parser("demo", help="`up`, classify a sample image, keep serving")
    _add_pair_options(demo)
    demo.set_defaults(func=_cmd_demo)

    bench = sub.add_parser("bench", help="load a running edge or cloud (or the model in-process) and report")
    bench.add_argument("--target", choices=["edge", "cloud", "local"], default="edge")
    bench.add_argument("--url", default=None, help=f"default: {EDGE_URL} (edge), {CLOUD_URL} (cloud)")
    bench.add_argument("--concurrency", type=int, default=1)
    bench.add_argument("--duration", type=float, default=None, help="seconds (default 20)")
    bench.add_argument("--requests", type=int, default=None, help="a request count instead of a duration")
    bench.add_argument("--warmup", type=float, default=3.0, help="seconds of unmeasured warm-up")
    bench.add_argument("--images", default=None, help="folder of images (default: 8 generated 640x480 JPEGs)")
    bench.add_argument("--count", type=int, default=8)
    bench.add_argument("--model", default="resnet18", help="for --target cloud/local")
    bench.add_argument("--weights", default="none", help="for --target cloud/local")
    bench.add_argument("--cut", default="layer3", help="for --target cloud: the payloads' cut")
    bench.add_argument("--codec", default="fp16", help="for --target cloud: the payloads' codec")
    bench.add_argument("--per-request", type=int, default=1, help="for --target cloud: images per payload")
    bench.add_argument("--name", default=None)
    bench.add_argument("--json", default=None, help="write the summary to this file")
    bench.add_argument("--latencies", default=None, help="write every request's latency (ms) to this JSON file")
    bench.set_defaults(func=_cmd_bench)

    profile = sub.add_parser("profile", help="measure head/tail/codec costs of every cut on this machine")
    profile.add_argument("--model", default="resnet18")
    profile.add_argument("--weights", default="none")
    profile.add_argument("--device", default="cpu")
    profile.add_argument("--threads", type=int, default=None)
    profile.add_argument("--all-cuts", action="store_true", help="every cut, not only single-tensor ones")
    profile.add_argument("--repeats", type=int, default=5)
    profile.add_argument("--images", default=None)
    profile.add_argument("-o", "--output", required=True)
    profile.set_defaults(func=_cmd_profile)

    planner = sub.add_parser("plan", help="predicted latency of every (cut, codec) for a link, best first")
    planner.add_argument("--edge-profile", required=True)
    planner.add_argument("--cloud-profile", required=True)
    planner.add_argument("--bandwidth", required=True, help="uplink rate: 5mbit, 50mbit, 1gbit...")
    planner.add_argument("--rtt", required=True, help="round-trip time: 30ms, 1ms...")
    planner.add_argument("--objective", choices=["latency", "edge-time", "bytes"], default="latency")
    planner.add_argument("--max-logit-error", type=float, default=1e-2, help="relative L2 bound for lossy codecs")
    planner.add_argument("--top", type=int, default=20)
    planner.add_argument("--plot", default=None, help="write a PNG of latency by cut (needs matplotlib)")
    planner.add_argument("--json", action="store_true")
    planner.set_defaults(func=_cmd_plan)

    classify = sub.add_parser("classify", help="classify images through a running edge")
    classify.add_argument("images", nargs="+")
    classify.add_argument("--edge-url", default=EDGE_URL)
    classify.add_argument("--top-k", type=int, default=5)
    classify.add_argument("--json", action="store_true")
    classify.set_defaults(func=_cmd_classify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ValueError as exc:  # bad model, cut, codec or settings: a message, not a traceback
        print(f"splitinfer: error: {exc}", file=sys.stderr)
        return 2
    return code
