"""splitinfer: split a PyTorch classifier between an edge and a cloud; inspect, run, classify, benchmark."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service_core.batch_limit import MAX_BATCH_SIZE_LIMIT
from splitinfer.export_cmd import add_export_parser
from splitinfer.failures import CliError, exit_reason, explain, failure_line
from splitinfer.tables import Column, print_table

__all__ = ["build_parser", "main"]

# NOTE: nothing heavy (torch, the services, rich) is imported here: `splitinfer --help` must stay instant.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")

EDGE_URL = "http://127.0.0.1:8000"
CLOUD_URL = "http://127.0.0.1:8001"


def _cmd_cuts(args: argparse.Namespace) -> int:
    loaded = _load_model(args)
    size = loaded.preprocessor.crop_size
    graph = loaded.graph()
    cuts = graph.single_tensor_cuts() if args.single else graph.cuts
    if args.json:
        print(json.dumps({"model": args.model, "input_size": size, "cuts": [c.to_json() for c in cuts]}, indent=2))
        return 0
    title = f"{args.model} ({size}x{size}): {len(graph.cuts)} cuts, {len(graph.single_tensor_cuts())} single-tensor"
    columns = [
        Column("#", numeric=True),
        Column("cut", names=True),
        Column("tensors alive"),
        Column("KiB fp32", numeric=True),
        Column("head FLOPs", numeric=True),
    ]
    rows = [
        [
            str(cut.index),
            cut.name,
            " + ".join("x".join(str(d) for d in t.shape) for t in cut.tensors)
            + (f" + {len(cut.values)} int value(s)" if cut.values else ""),
            f"{cut.bytes_fp32 / 1024:.1f}",
            f"{cut.head_flops_share:.1%}",
        ]
        for cut in cuts
    ]
    print_table(title, columns, rows, width=args.width)
    return 0


def _image_folder(folder: str) -> list[bytes]:
    """The JPEG/PNG/WebP images of ``folder``, each checked to decode (a bad one is named)."""
    from shared.errors import SplitInferError
    from shared.preprocessing import decode_image

    root = Path(folder)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise CliError(f"--images {folder!r} {what}: pass a folder of JPEG, PNG or WebP images")
    paths = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise CliError(f"--images {folder!r} holds no .jpg, .jpeg, .png or .webp files")
    blobs = []
    for path in paths:
        blob = path.read_bytes()
        try:
            decode_image(blob)
        except SplitInferError as exc:
            raise CliError(f"{path}: {exc.detail}; remove it or pass another folder") from exc
        blobs.append(blob)
    return blobs


def _cmd_codecs(args: argparse.Namespace) -> int:
    from splitinfer.fidelity import codec_report
    from splitinfer.samples import encode_image, synthetic_image

    if args.images:
        jpegs = _image_folder(args.images)
    else:
        jpegs = [encode_image(synthetic_image(seed=seed)) for seed in range(args.count)]
    if not jpegs:
        raise CliError("--count must be at least 1")
    loaded = _load_model(args)  # NOTE: after the cheap checks: loading DEFAULT weights may try the network
    graph = loaded.graph()
    codecs = args.codecs.split(",") if args.codecs else None
    rows = codec_report(loaded, graph, graph.cut(args.cut).name, jpegs, codecs=codecs, autocast=args.autocast)
    if args.json:
        print(json.dumps([r.to_json() for r in rows], indent=2))
        _random_weights_note(loaded)
        return 0
    cut = graph.cut(args.cut)
    autocast = ", tail under bf16 autocast" if args.autocast == "bf16" else ""
    title = f"{args.model} at {cut.name}: {len(jpegs)} images, {cut.bytes_fp32} fp32 bytes/image{autocast}"
    headers = ("bytes/img", "vs fp32", "vs JPEG", "enc ms", "dec ms", "max |err|", "rel L2", "top-1", "top-5")
    columns = [Column("codec", names=True), *(Column(h, numeric=True) for h in headers)]
    table = [
        [
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
        ]
        for r in rows
    ]
    print_table(title, columns, table, width=args.width)
    _random_weights_note(loaded)
    return 0


def _cmd_cloud(args: argparse.Namespace) -> int:
    from cloud_service.app import create_app
    from cloud_service.settings import CloudSettings
    from service_core.connections import raise_open_files_limit
    from splitinfer.checks import check_device, check_model_name
    from splitinfer.serve import run_service
    from splitinfer.settings_flags import settings_from_args

    raise_open_files_limit()  # NOTE: before the settings, whose default MAX_CONNECTIONS fits the limit
    settings = settings_from_args(CloudSettings, args)
    check_model_name(settings.model)
    check_device(settings.device)
    if settings.workers > 1:
        from splitinfer.workers import run_workers

        return run_workers(settings)
    run_service(create_app(settings), settings, debug=getattr(args, "debug", False))
    return 0


def _cmd_edge(args: argparse.Namespace) -> int:
    from edge_service.app import create_app
    from edge_service.settings import EdgeSettings
    from service_core.connections import raise_open_files_limit
    from splitinfer.checks import check_device, check_model_name
    from splitinfer.serve import run_service
    from splitinfer.settings_flags import settings_from_args

    raise_open_files_limit()  # NOTE: before the settings, whose default MAX_CONNECTIONS fits the limit
    settings = settings_from_args(EdgeSettings, args)
    check_model_name(settings.model)
    check_device(settings.device)
    run_service(create_app(settings), settings, debug=getattr(args, "debug", False))
    return 0


def _pair_args(args: argparse.Namespace) -> tuple[list[str], list[str], list[str]]:
    common = ["--model", args.model, "--weights", args.weights, "--host", "127.0.0.1"]
    cloud = ["--port", str(args.cloud_port)]
    edge = ["--port", str(args.edge_port), "--cut", args.cut, "--cloud-url", f"http://127.0.0.1:{args.cloud_port}"]
    if args.codec:
        edge += ["--codec", args.codec]
    return common, cloud, edge


class _StopRequested(Exception):
    """SIGTERM or SIGHUP reached ``up``/``demo``: stop both services now, even while their models load."""


def _run_pair(args: argparse.Namespace, after_ready: Any = None) -> int:
    from splitinfer.checks import check_model_name, check_port_free
    from splitinfer.processes import spawn, stop_all, wait_ready
    from splitinfer.serve import configure_logging
    from splitinfer.threads import pair_threads_env

    check_model_name(args.model)
    check_port_free("127.0.0.1", args.cloud_port, "--cloud-port")
    check_port_free("127.0.0.1", args.edge_port, "--edge-port")
    configure_logging("info")
    common, cloud_args, edge_args = _pair_args(args)
    launch = [sys.executable, "-m", "splitinfer"]
    # NOTE: every core each, with idle OpenMP threads spinning briefly, then sleeping (splitinfer.threads).
    threads = pair_threads_env(os.environ)
    processes: list[subprocess.Popen[bytes]] = []  # NOTE: stopped in this order: the edge first
    stopping = False
    starting = False

    def stop(signum: int, _: object) -> None:
        nonlocal stopping
        if not stopping:  # NOTE: the first one interrupts whatever `up` waits on (models loading included)
            stopping = True
            if not starting:  # NOTE: else once the service being started is in `processes` (start below)
                raise _StopRequested

    def start(kind: str, arguments: list[str]) -> subprocess.Popen[bytes]:
        """Spawn one service and add it to ``processes`` (the edge first), a stop signal held off meanwhile:
        raised inside ``spawn``, it left a started service out of the processes stopped below (it died of its
        parent-death signal only after `up` had exited)."""
        nonlocal starting
        starting = True
        try:
            process = spawn([*launch, kind, *common, *arguments], env=threads, die_with_parent=True)
            processes.insert(0 if kind == "edge" else len(processes), process)
        finally:
            starting = False
        if stopping:
            raise _StopRequested
        return process

    # NOTE: SIGHUP too (the terminal closed): the children run in sessions of their own, so nothing else
    # stops them, and `up` killed by it left both serving.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    try:
        # NOTE: both die with `up`, even of SIGKILL (they run in sessions of their own; both were left serving).
        cloud = start("cloud", cloud_args)
        edge = start("edge", edge_args)
        try:
            wait_ready(f"http://127.0.0.1:{args.edge_port}/readyz", args.ready_timeout, processes)
        except (RuntimeError, TimeoutError) as exc:
            raise CliError(f"{exc} (its log is above)") from exc
        if after_ready is not None:
            after_ready()
        print(
            f"\nedge  http://127.0.0.1:{args.edge_port}  (demo page: /, API docs: /docs)\ncloud http://127.0.0.1:{args.cloud_port}"
        )
        print("Ctrl-C stops both.", flush=True)
        while not stopping and all(p.poll() is None for p in processes):
            time.sleep(0.5)
        for name, process in (("edge", edge), ("cloud", cloud)):
            if not stopping and process.returncode is not None:
                print(f"splitinfer: error: the {name} exited ({exit_reason(process.returncode)})", file=sys.stderr)
    except (KeyboardInterrupt, _StopRequested):
        pass
    finally:
        print("\nstopping the edge, then the cloud (Ctrl-C again stops both at once)...", flush=True)
        try:
            # NOTE: the edge first: its requests in flight need the cloud until they are finished.
            stop_all(processes)
        except KeyboardInterrupt:
            for process in processes:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
    failed = [p.returncode for p in processes if p.returncode not in (0, -signal.SIGTERM)]
    return 1 if failed and not stopping else 0


def _cmd_up(args: argparse.Namespace) -> int:
    return _run_pair(args)


def _print_results(results: Sequence[tuple[str, dict[str, Any]]], width: int | None = None) -> None:
    columns = [Column("rank", numeric=True), Column("class", numeric=True), Column("label"), Column("probability")]
    for name, body in results:
        print_table(
            f"{name}: {body['model']} ({body['weights']} weights), cut {body['cut']}, codec {body['codec']}, "
            f"{body['payload_bytes']} bytes sent, completed on {body['completed_on']}, "
            f"{body['timings_ms']['total']:.1f} ms",
            columns,
            [
                [str(rank), str(p["index"]), p["label"], f"{p['probability']:.4f}"]
                for rank, p in enumerate(body["predictions"], 1)
            ],
            width=width,
        )


def _problem_text(response: Any) -> str:
    """A reply's problem detail (or the start of its body) on one line."""
    try:
        body = response.json()
        text = str(body.get("detail") or body.get("title") or body)
    except (ValueError, AttributeError):
        text = response.text[:300]
    return f"{response.status_code} {response.reason_phrase}: {text}"


def _classify_files(edge_url: str, paths: Sequence[Path], top_k: int) -> list[tuple[str, dict[str, Any]]]:
    import httpx

    for path in paths:
        if not path.is_file():
            raise CliError(f"no such image file: {path}" if not path.exists() else f"{path} is not a file")
    results = []
    try:
        with httpx.Client(base_url=edge_url, timeout=60) as client:
            for path in paths:
                response = client.post(
                    "/v1/classify", params={"top_k": top_k}, files={"image": (path.name, path.read_bytes())}
                )
                if response.status_code != 200:
                    raise CliError(f"{path}: the edge answered {_problem_text(response)}")
                results.append((path.name, response.json()))
    except httpx.ConnectError as exc:
        raise CliError(
            f"cannot connect to an edge at {edge_url} ({exc}): start one with `splitinfer up` "
            "(or `make demo`), or pass --edge-url"
        ) from exc
    except httpx.TimeoutException as exc:
        raise CliError(
            f"the edge at {edge_url} did not answer in time ({type(exc).__name__}); is it overloaded?"
        ) from exc
    except httpx.TransportError as exc:
        raise CliError(f"talking to the edge at {edge_url} failed: {type(exc).__name__}: {exc}") from exc
    return results


def _cmd_classify(args: argparse.Namespace) -> int:
    results = _classify_files(args.edge_url, [Path(p) for p in args.images], args.top_k)
    if args.json:
        print(json.dumps([body for _, body in results], indent=2))
    else:
        _print_results(results, args.width)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from splitinfer.samples import encode_image, synthetic_image

    sample = Path(tempfile.gettempdir()) / "splitinfer-sample.jpg"
    sample.write_bytes(encode_image(synthetic_image()))

    edge_url = f"http://127.0.0.1:{args.edge_port}"
    # NOTE: `classify` asks EDGE_URL unless told otherwise: name the demo's edge when it listens elsewhere.
    edge_url_flag = "" if edge_url == EDGE_URL else f" --edge-url {edge_url}"

    def classify_sample() -> None:
        _print_results(_classify_files(edge_url, [sample], 5))
        print(
            "\nTry it yourself:\n"
            f"  curl -s -F image=@{sample} '{edge_url}/v1/classify?top_k=3'\n"
            f"  .venv/bin/splitinfer classify{edge_url_flag} {sample}"
        )

    return _run_pair(args, classify_sample)


def _check_bench_args(args: argparse.Namespace) -> None:
    """Counts and times that would run nothing, or divide by zero, are usage mistakes (exit status 2)."""
    if args.concurrency < 1:
        raise CliError(f"--concurrency must be at least 1, not {args.concurrency}")
    if args.requests is not None and args.requests < 1:
        raise CliError(f"--requests must be at least 1, not {args.requests}")
    if args.duration is not None and not 0 < args.duration < float("inf"):
        raise CliError(f"--duration must be a positive number of seconds, not {args.duration}")
    if not 0 <= args.warmup < float("inf"):
        raise CliError(f"--warmup must be 0 or more seconds, not {args.warmup}")
    if args.count < 1:
        raise CliError(f"--count must be at least 1, not {args.count}")
    if not 1 <= args.per_request <= MAX_BATCH_SIZE_LIMIT:
        raise CliError(
            f"--per-request must be between 1 and {MAX_BATCH_SIZE_LIMIT} (the largest MAX_BATCH_SIZE a cloud "
            f"accepts), not {args.per_request}"
        )


def _check_cloud_batch_limit(url: str, per_request: int) -> None:
    """Refuse (exit status 2) more images per payload than the cloud at ``url`` takes in one (its
    ``MAX_BATCH_SIZE``, as its ``/v1/info`` says), before any payload is built: each would be refused (413)."""
    from splitinfer.bench import cloud_batch_limit

    limit = cloud_batch_limit(url)
    if limit is not None and per_request > limit:
        raise CliError(
            f"--per-request {per_request} is more than the cloud at {url} takes in one payload: its "
            f"MAX_BATCH_SIZE is {limit} (its /v1/info); send at most {limit}, or start it with a larger "
            f"MAX_BATCH_SIZE (at most {MAX_BATCH_SIZE_LIMIT})"
        )


def _cmd_bench(args: argparse.Namespace) -> int:
    from rich.console import Console

    from splitinfer.bench import bench_images, run_target
    from splitinfer.loadgen import markdown_table

    _check_bench_args(args)
    if (args.duration is None) == (args.requests is None):
        args.duration = args.duration or 20.0
    images = _image_folder(args.images) if args.images else bench_images(None, args.count)
    url = args.url or (CLOUD_URL if args.target == "cloud" else EDGE_URL)
    if args.target == "cloud":
        _check_cloud_batch_limit(url, args.per_request)
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
    Console(width=args.width, soft_wrap=args.width is None).print(markdown_table([summary]))
    return 1 if summary["errors"] else 0


_PROFILE_SPREAD_WARNING = 0.25


def _cmd_profile(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from shared.planning import GENERATED_IMAGES_NOTE, profile_model
    from splitinfer.bench import bench_images
    from splitinfer.checks import check_device

    check_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = _load_model(args)
    graph = loaded.graph()
    cuts = len(graph.cuts if args.all_cuts else graph.single_tensor_cuts())
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"profiling {args.model}", total=cuts + 1)  # NOTE: + the timing of every cut

        def progress(cut: str) -> None:
            bar.update(task, advance=1, description=f"profiling {args.model} at {cut}")

        started = time.perf_counter()
        profile = profile_model(
            loaded,
            bench_images(args.images) if args.images else None,  # NOTE: None: the library's generated pictures
            images_source=_photos_label(args.images) if args.images else "",
            device=args.device,
            all_cuts=args.all_cuts,
            repeats=args.repeats,
            progress=progress,
            engine=args.engine,
            onnx_threads=args.onnx_threads,
            openvino_precision=args.openvino_precision,
            cpu_quota="detect" if args.cpu_quota is None else (args.cpu_quota or None),
        )
    profile.save(args.output)
    elapsed = time.perf_counter() - started
    quota = f", timed as under its CPU quota of {profile.cpu_quota:g} cores" if profile.cpu_quota else ""
    print(
        f"wrote {args.output}: {len(profile.cuts)} cuts of {args.model} on {args.device} ({args.engine}) in "
        f"{elapsed:.1f} s{quota}"
    )
    if profile.spread > _PROFILE_SPREAD_WARNING:
        print(
            f"WARNING: repeated timings of one cut disagree by up to {profile.spread:.0%} (interquartile range over "
            "median): the machine was busy. Re-run on a quiet machine, or with more --repeats.",
            file=sys.stderr,
        )
    _random_weights_note(loaded)
    if loaded.weights_kind != "random" and not args.images:
        print(f"NOTE: {GENERATED_IMAGES_NOTE}", file=sys.stderr)
    return 0


def _photos_label(folder: str) -> str:
    """How a profile records the folder of photos given: as given, unless that spells the generated pictures'
    label (a folder named ``generated``), whose errors the planner counts twice."""
    from shared.planning import GENERATED_IMAGES

    return f"./{folder}" if folder == GENERATED_IMAGES else folder


def _cmd_plan(args: argparse.Namespace) -> int:
    from shared.planning import fidelity_guard_note, pareto, plan
    from shared.units import parse_bandwidth, parse_duration
    from splitinfer.checks import load_profile
    from splitinfer.plot import plot_plan, require_matplotlib

    if args.plot:
        require_matplotlib()  # before the work: a missing extra is said at once
    # NOTE: NaN admitted every lossy codec (no error compares above it), a negative bound even fp32 none.
    if not args.max_logit_error >= 0:
        raise CliError(f"--max-logit-error must be a number of 0 or more, not {args.max_logit_error}")
    if args.top is not None and args.top < 1:
        raise CliError(f"--top must be at least 1, not {args.top}")
    bandwidth, rtt = parse_bandwidth(args.bandwidth), parse_duration(args.rtt)
    edge, cloud = load_profile(args.edge_profile, "edge"), load_profile(args.cloud_profile, "cloud")
    rows = plan(
        edge, cloud, bandwidth_bps=bandwidth, rtt_s=rtt, objective=args.objective, max_logit_error=args.max_logit_error
    )
    front = {(r.cut, r.codec) for r in pareto(rows)}
    note = fidelity_guard_note(edge, args.max_logit_error)
    if note is not None:
        print(f"NOTE: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps([r.to_json() | {"pareto": (r.cut, r.codec) in front} for r in rows], indent=2))
    else:
        columns = [
            Column("#", numeric=True),
            Column("cut", names=True),
            Column("codec", names=True),
            *(Column(h, numeric=True) for h in ("latency ms", "edge ms", "link ms", "cloud ms", "bytes", "rel L2")),
        ]
        table = [
            [
                f"{rank}{'*' if (r.cut, r.codec) in front else ''}",
                r.cut,
                r.codec or "-",
                f"{r.latency_ms:.1f}",
                f"{r.edge_ms:.1f}",
                f"{r.transfer_ms:.1f}",
                f"{r.cloud_ms:.1f}",
                f"{r.bytes_per_image:,.0f}",
                f"{r.relative_l2_error:.1e}",
            ]
            for rank, r in enumerate(rows[: args.top], 1)
        ]
        engines = f"edge {edge.engine_label}, cloud {cloud.engine_label}"
        title = f"{edge.model} ({engines}): {args.bandwidth}, RTT {args.rtt}, by {args.objective} (* Pareto)"
        print_table(title, columns, table, width=args.width)
    if args.plot:
        order = {c.name: c.index for c in edge.cuts}
        # NOTE: a name without a suffix gets matplotlib's default format's (it said `wrote NAME`, not NAME.png).
        written = args.plot if Path(args.plot).suffix else f"{args.plot}.png"
        plot_plan(rows, order, written, f"{edge.model}, {args.bandwidth}, RTT {args.rtt}")
        print(f"wrote {written}", file=sys.stderr if args.json else sys.stdout)
    return 0


_MODEL_OPTIONS = (
    "input_size",
    "resize_size",
    "interpolation",
    "mean",
    "std",
    "pixel_scale",
    "labels_file",
    "leaf_modules",
    "autowrap_functions",
    "autowrap_modules",
    "concrete_args",
)


def _add_model_options(parser: argparse.ArgumentParser, name: str, command: str | None) -> None:
    """The preprocessing, labels and tracer settings of the services, as flags of command ``name``; only
    when ``command`` is that one (their help text comes from the settings class, which imports pydantic)."""
    if command != name:
        return
    from service_core.settings import ServiceSettings

    group = parser.add_argument_group("model options (as the services' settings of the same names)")
    for name in _MODEL_OPTIONS:
        field = ServiceSettings.model_fields[name]
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, help=field.description)


def _load_model(args: argparse.Namespace) -> Any:
    """``args.model`` with ``args.weights`` and the model options."""
    from service_core.settings import ServiceSettings
    from shared.models import load_model

    given = {name: getattr(args, name) for name in _MODEL_OPTIONS if getattr(args, name, None) is not None}
    settings = ServiceSettings(model=args.model, weights=args.weights, **given)
    return load_model(args.model, args.weights, fallback_to_random=True, options=settings.model_options())


def _random_weights_note(loaded: Any) -> None:
    """After a measurement: a loud note when it was made with random weights."""
    if loaded.weights_kind == "random":
        print(
            f"NOTE: {loaded.name} has RANDOM weights: codec errors and top-1 agreement measured on random weights "
            "say little about a trained model (use --weights DEFAULT, a state_dict file, or efficientnet_lite0).",
            file=sys.stderr,
        )


def _add_pair_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--weights", default="DEFAULT", help="DEFAULT falls back to seeded random weights offline")
    parser.add_argument("--cut", default="default")
    parser.add_argument("--codec", default=None)
    parser.add_argument("--edge-port", type=int, default=8000)
    parser.add_argument("--cloud-port", type=int, default=8001)
    parser.add_argument("--ready-timeout", type=float, default=300)


def _common_options() -> argparse.ArgumentParser:
    """Options every command takes, before or after its name (``splitinfer --debug cuts`` = ``cuts --debug``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--width",
        type=int,
        default=argparse.SUPPRESS,
        help="draw tables this many columns wide (default: the terminal's; when output is not a terminal, "
        "tables are full-width Markdown and names are never cut)",
    )
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of a failure"
    )
    return common


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; the settings flags of ``edge`` and ``cloud`` (and the model options of ``cuts``,
    ``codecs`` and ``profile``) are added only when ``command`` is that one, because generating them
    imports the services (and torch) or pydantic: ``splitinfer --help`` stays fast."""
    common = _common_options()
    parser = argparse.ArgumentParser(prog="splitinfer", description=__doc__, parents=[common])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, parents=[common])

    cuts = add("cuts", "list every valid cut of a model")
    cuts.add_argument("model")
    cuts.add_argument("--weights", default="none")
    _add_model_options(cuts, "cuts", command)
    cuts.add_argument("--single", action="store_true", help="only cuts across which one tensor is alive")
    cuts.add_argument("--json", action="store_true")
    cuts.set_defaults(func=_cmd_cuts)

    codecs = add("codecs", "payload size, speed and fidelity of every codec at one cut")
    codecs.add_argument("model")
    codecs.add_argument("--cut", default="default", help="default: the single-tensor cut nearest half the FLOPs")
    codecs.add_argument(
        "--weights", default="DEFAULT", help="DEFAULT: real weights when available (else random, with a loud note)"
    )
    _add_model_options(codecs, "codecs", command)
    codecs.add_argument("--images", default=None, help="a folder of JPEG/PNG/WebP images (default: generated)")
    codecs.add_argument("--count", type=int, default=8, help="generated images when --images is not given")
    codecs.add_argument("--codecs", default=None, help="comma-separated codecs (default: every fixed one + compact)")
    codecs.add_argument("--autocast", choices=["none", "bf16"], default="none", help="run the tail as the cloud would")
    codecs.add_argument("--json", action="store_true")
    codecs.set_defaults(func=_cmd_codecs)

    cloud = add("cloud", "run the cloud service")
    cloud.set_defaults(func=_cmd_cloud)
    edge = add("edge", "run the edge service")
    edge.set_defaults(func=_cmd_edge)
    if command in ("cloud", "edge"):
        from splitinfer.settings_flags import add_settings_flags

        if command == "cloud":
            from cloud_service.settings import CloudSettings

            add_settings_flags(cloud, CloudSettings)
        else:
            from edge_service.settings import EdgeSettings

            add_settings_flags(edge, EdgeSettings)

    up = add("up", "run cloud (:8001) and edge (:8000) on loopback")
    _add_pair_options(up)
    up.set_defaults(func=_cmd_up)

    demo = add("demo", "`up`, classify a sample image, keep serving")
    _add_pair_options(demo)
    demo.set_defaults(func=_cmd_demo)

    bench = add("bench", "load a running edge or cloud (or the model in-process) and report")
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
    bench.add_argument("--cut", default="default", help="for --target cloud: the payloads' cut")
    bench.add_argument("--codec", default="fp16", help="for --target cloud: the payloads' codec")
    bench.add_argument(
        "--per-request",
        type=int,
        default=1,
        help="for --target cloud: images per payload (at most the cloud's MAX_BATCH_SIZE, as its /v1/info says)",
    )
    bench.add_argument("--name", default=None)
    bench.add_argument("--json", default=None, help="write the summary to this file")
    bench.add_argument("--latencies", default=None, help="write every request's latency (ms) to this JSON file")
    bench.set_defaults(func=_cmd_bench)

    profile = add("profile", "measure head/tail/codec costs of every cut on this machine")
    profile.add_argument("--model", default="resnet18")
    profile.add_argument(
        "--weights", default="DEFAULT", help="DEFAULT: real weights when available (else random, with a loud note)"
    )
    _add_model_options(profile, "profile", command)
    profile.add_argument("--device", default="cpu")
    profile.add_argument("--threads", type=int, default=None)
    profile.add_argument("--all-cuts", action="store_true", help="every cut, not only single-tensor ones")
    profile.add_argument("--repeats", type=int, default=5)
    profile.add_argument("--images", default=None)
    profile.add_argument(
        "--engine", choices=["torch", "onnxruntime", "openvino"], default="torch", help="what runs the halves"
    )
    profile.add_argument("--onnx-threads", type=int, default=1, help="threads (engines onnxruntime, openvino)")
    profile.add_argument(
        "--openvino-precision", choices=["f32", "bf16"], default="f32", help="engine openvino's precision"
    )
    profile.add_argument(
        "--cpu-quota",
        type=float,
        default=None,
        metavar="CORES",
        help="the CPU quota the times are taken under (default: read from this process's cgroup; 0: none): times "
        "are then the longer of wall time and CPU time / quota, what a request sees once the quota throttles it",
    )
    profile.add_argument("-o", "--output", required=True)
    profile.set_defaults(func=_cmd_profile)

    planner = add("plan", "predicted latency of every (cut, codec) for a link, best first")
    planner.add_argument("--edge-profile", required=True)
    planner.add_argument("--cloud-profile", required=True)
    planner.add_argument("--bandwidth", required=True, help="uplink rate: 5mbit, 50mbit, 1gbit...")
    planner.add_argument("--rtt", required=True, help="round-trip time: 30ms, 1ms...")
    planner.add_argument("--objective", choices=["latency", "edge-time", "bytes"], default="latency")
    planner.add_argument("--max-logit-error", type=float, default=1e-2, help="relative L2 bound for lossy codecs")
    planner.add_argument("--top", type=int, default=20)
    planner.add_argument(
        "--plot", default=None, help="write a PNG of latency by cut, in execution order (needs the 'plot' extra)"
    )
    planner.add_argument("--json", action="store_true")
    planner.set_defaults(func=_cmd_plan)

    add_export_parser(sub, [common])

    classify = add("classify", "classify images through a running edge")
    classify.add_argument("images", nargs="+")
    classify.add_argument("--edge-url", default=EDGE_URL)
    classify.add_argument("--top-k", type=int, default=5)
    classify.add_argument("--json", action="store_true")
    classify.set_defaults(func=_cmd_classify)
    return parser


_HEAVY_PARSERS = ("cloud", "edge", "cuts", "codecs", "profile")
"""Commands whose flags are generated from the settings classes (so that `splitinfer --help` stays fast)."""


def _command_of(argv: Sequence[str]) -> str | None:
    return next((token for token in argv if token in _HEAVY_PARSERS), None)


def _close_stdout_quietly() -> None:
    """After a broken pipe: point stdout at /dev/null so that the flush at exit cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; an expected failure is one line on stderr and exit status 2 (``--debug``: raise)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(_command_of(arguments)).parse_args(arguments)
    debug = getattr(args, "debug", False)
    args.width = getattr(args, "width", None)
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # NOTE: inside the try, so that a reader that went away is reported here
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _close_stdout_quietly()
        if debug:
            raise
        print(
            "splitinfer: error: standard output was closed before everything was written "
            "(piped into head?); the rest was dropped",
            file=sys.stderr,
        )
        return 2
    except Exception as exc:
        message = explain(exc)
        if message is None or debug:
            raise
        print(failure_line("splitinfer", message), file=sys.stderr)
        return 2
    return code
