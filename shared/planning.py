"""Measured profiles and the planner: which (cut, codec) is fastest for a given link.

A profile is measured on one machine (the edge or the cloud) by :func:`profile_model`; the planner
combines the edge's head and encode times with the cloud's decode and tail times and the link's
transfer time::

    latency = image(edge) + head(edge) + encode(edge) + wire_bytes * 8 / bandwidth + rtt + decode(cloud) + tail(cloud)

where ``image(edge)`` is decoding the received image and (for every cut but ``input``) preprocessing it,
and ``wire_bytes`` are the payload and the reply with TCP/IP/Ethernet framing (the link is assumed
symmetric: the reply comes back at the same rate).

Cut ``output`` never touches the link; cut ``input`` ships the image as received (its "decode" is the
cloud's image decoding and preprocessing).
"""

from __future__ import annotations

import gc
import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch

from shared.cores import cpu_quota_cores
from shared.models import LoadedModel
from shared.preprocessing import ImageLimits, decode_image
from shared.protocol import (
    encode_activations,
    encode_images,
    encode_logits,
    expected_for_cut,
    expected_images,
    images_from_payload,
)
from shared.samples import generated_jpegs
from shared.splitting import INPUT_CUT, OUTPUT_CUT, Cut, ModelGraph
from shared.wire import WireLimits, decode_payload

__all__ = [
    "CodecProfile",
    "CutProfile",
    "FRAMING_OVERHEAD",
    "GENERATED_ERROR_FACTOR",
    "GENERATED_PROFILE_IMAGES",
    "GENERATED_IMAGES",
    "MAX_PROFILE_BYTES",
    "GENERATED_IMAGES_NOTE",
    "fidelity_guard",
    "fidelity_guard_note",
    "monotone",
    "PROFILE_CODECS",
    "PlanRow",
    "Profile",
    "pareto",
    "plan",
    "profile_model",
]

In = TypeVar("In")
Out = TypeVar("Out")

Objective = Literal["latency", "edge-time", "bytes"]
PROFILE_CODECS = ("fp32", "fp16", "int8+zstd", "int6+ans", "budget10+ans", "budget20+ans", "dct10+ans", "dct20+ans")
"""Profiled at every cut; the planner keeps a lossy one only where its measured logit error passes the guard."""
# Bytes on the link per payload byte: TCP/IPv4 (with timestamps) in Ethernet frames carry 1448 bytes
# of data in 1514 bytes.
FRAMING_OVERHEAD = 1514 / 1448


@dataclass(frozen=True)
class CodecProfile:
    codec: str
    bytes_per_image: float
    encode_ms: float
    decode_ms: float
    relative_l2_error: float


@dataclass(frozen=True)
class CutProfile:
    name: str
    index: int
    head_ms: float
    tail_ms: float
    codecs: tuple[CodecProfile, ...]


MAX_PROFILE_BYTES = 16 * 1024 * 1024
"""The largest profile file read: far more than any model's (a cut with its eight codecs is about 2 KiB)."""
GENERATED_IMAGES = "generated"
"""``Profile.images`` when :func:`profile_model` measured on pictures it generated (given no images;
``splitinfer profile`` without ``--images``)."""
GENERATED_PROFILE_IMAGES = 4
"""How many pictures :func:`profile_model` generates when given none (640x480 JPEGs, q=90)."""
GENERATED_ERROR_FACTOR = 2.0
"""The planner counts codec errors measured on generated pictures this many times: on real photos they are
larger, by 1.9x (median over EfficientNet-Lite0's 474 routes with its real weights; docs/benchmarks.md,
"Fidelity guard"), and at 2x the 1% guard admits about what it admits when the errors are measured on photos."""
GENERATED_IMAGES_NOTE = (
    "the codec errors in this profile were measured on generated pictures (no --images); on real photos "
    f"they are larger (about 2x), so the planner counts them {GENERATED_ERROR_FACTOR:g} times against the "
    "fidelity guard (--max-logit-error; docs/benchmarks.md, 'Fidelity guard'). With trained weights, profile "
    "with --images DIR of photos like the ones you will serve."
)


@dataclass
class Profile:
    model: str
    weights_digest: str
    device: str
    threads: int
    input_size: int
    machine: dict[str, str]
    cuts: list[CutProfile] = field(default_factory=list)
    image_decode_ms: float = 0.0  # decoding one received image (every cut decodes it on the edge)
    preprocess_ms: float = 0.0  # resize, crop and normalise it (on the edge for every cut but input)
    reply_bytes: float = 0.0  # the cloud's answer (one image's logits)
    engine: str = "torch"  # torch, onnxruntime or openvino (a profile is of a model, cut, codec and engine)
    precision: str = "f32"  # engine openvino's precision (f32 or bf16); f32 for the others
    spread: float = 0.0  # the largest interquartile range / median of a cut's repeated head or tail times
    cpu_quota: float | None = None  # the CPU quota (cores) the times were taken under: see profile_model
    images: str = ""  # what the codec errors were measured on: GENERATED_IMAGES, the photos' source, or "" (unsaid)

    @property
    def engine_label(self) -> str:
        """The engine, with its precision where that is not f32 (``openvino (bf16)``)."""
        return self.engine if self.precision == "f32" else f"{self.engine} ({self.precision})"

    @property
    def error_factor(self) -> float:
        """How many times the planner counts this profile's codec errors against the fidelity guard:
        :data:`GENERATED_ERROR_FACTOR` when they were measured on generated pictures, else 1."""
        return GENERATED_ERROR_FACTOR if self.images == GENERATED_IMAGES else 1.0

    def image_path_ms(self, cut: str) -> float:
        """What the edge spends on the image before the head runs at ``cut`` (decode, and preprocess)."""
        return self.image_decode_ms + (0.0 if cut == INPUT_CUT else self.preprocess_ms)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        """Read a profile; a file that is not one this version reads raises :class:`ValueError` saying so (in
        one line naming the file: a profile may be a file someone handed you)."""
        how = "write it again with `splitinfer profile`"
        path = Path(path)
        if not path.is_file():  # NOTE: a FIFO or a device would block or never end
            raise ValueError(f"{path} is not a regular file: not a profile; {how}")
        if path.stat().st_size > MAX_PROFILE_BYTES:
            raise ValueError(f"{path} is over {MAX_PROFILE_BYTES} bytes, more than any profile; {how}")
        try:
            data = json.loads(path.read_bytes())
        except (ValueError, RecursionError) as exc:  # NOTE: JSON, UTF-8 and int-digit errors are ValueErrors
            raise ValueError(
                f"{path} is not a profile this version of splitinfer reads (not JSON: {type(exc).__name__}: "
                f"{str(exc)[:200]}); {how}"
            ) from exc
        try:
            cuts = [
                CutProfile(
                    name=c["name"],
                    index=c["index"],
                    head_ms=c["head_ms"],
                    tail_ms=c["tail_ms"],
                    codecs=tuple(CodecProfile(**p) for p in c["codecs"]),
                )
                for c in data.pop("cuts")
            ]
            profile = cls(**data, cuts=cuts)
            _check_numbers(profile)
            return profile
        except (TypeError, KeyError, AttributeError, ValueError) as exc:
            raise ValueError(
                f"{path} is not a profile this version of splitinfer reads ({type(exc).__name__}: {exc}); "
                "write it again with `splitinfer profile`"
            ) from exc


def _check_numbers(profile: Profile) -> None:
    """Every time, size and error of ``profile`` is a finite, non-negative number (the planner compares them:
    a NaN would make any route look best)."""
    named: list[tuple[str, object]] = [
        (name, getattr(profile, name)) for name in ("image_decode_ms", "preprocess_ms", "reply_bytes", "spread")
    ]
    for cut in profile.cuts:
        named += [(f"cut {cut.name!r} {name}", getattr(cut, name)) for name in ("head_ms", "tail_ms")]
        for codec in cut.codecs:
            named += [
                (f"cut {cut.name!r} codec {codec.codec!r} {name}", getattr(codec, name))
                for name in ("bytes_per_image", "encode_ms", "decode_ms", "relative_l2_error")
            ]
    for name, value in named:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
            raise ValueError(f"{name} is {value!r}; times, sizes and errors are finite, non-negative numbers")


@dataclass(frozen=True)
class _Stopwatch:
    """Times work as a request will see it: wall time, or, inside a CPU quota (``cpu_quota`` cores), the
    process's CPU time over the quota when that is longer.

    NOTE: under a CFS quota, work shorter than the slice left in the current period runs at full speed, so a
    short encode timed alone looks as fast as on an uncapped machine; a request, which runs many such pieces
    back to back, gets only ``cpu_quota`` of a core on average. CPU time over the quota is that steady-state
    time (e.g. 1 ms of CPU is 4 ms at 0.25 core)."""

    cpu_quota: float | None = None

    def start(self) -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def ms(self, started: tuple[float, float]) -> float:
        wall_ms = (time.perf_counter() - started[0]) * 1000
        if self.cpu_quota is None:
            return wall_ms
        return max(wall_ms, (time.process_time() - started[1]) * 1000 / self.cpu_quota)


_WALL = _Stopwatch()


def _median_ms(fn: Callable[[], object], repeats: int, watch: _Stopwatch = _WALL) -> float:
    return statistics.median(_interleaved_ms([fn], repeats, watch=watch)[0])


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The garbage collector off while timing, as timeit does: a collection inside one run would be charged
    to that run."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def _timed_over(
    fn: Callable[[In], Out], inputs: Sequence[In], repeats: int, watch: _Stopwatch = _WALL
) -> tuple[list[Out], float]:
    """``fn`` of every input, and its median time (ms, by ``watch``) over ``repeats`` runs (at least one per
    input but the first) that cycle through the inputs after an unmeasured warm-up run on the first: the runs
    the profile needs anyway (each image's payload, each payload decoded) are the ones timed."""
    outputs: dict[int, Out] = {0: fn(inputs[0])}
    times: list[float] = []
    with _gc_paused():
        for run in range(1, 1 + max(repeats, len(inputs) - 1)):
            index = run % len(inputs)
            started = watch.start()
            output = fn(inputs[index])
            times.append(watch.ms(started))
            outputs.setdefault(index, output)
    return [outputs[index] for index in range(len(inputs))], statistics.median(times)


def _interleaved_ms(
    fns: Sequence[Callable[[], object]],
    repeats: int,
    sync: Callable[[], None] | None = None,
    *,
    watch: _Stopwatch = _WALL,
) -> list[list[float]]:
    """``repeats`` times of each of ``fns`` (ms, by ``watch``), measured in rounds that run each once in turn
    (drift hits them alike), after one unmeasured warm-up round; ``sync`` waits for the device after each run
    (CUDA kernels are asynchronous: without it only their launch is timed)."""
    samples: list[list[float]] = [[] for _ in fns]
    with _gc_paused():
        for round_index in range(repeats + 1):
            for fn, times in zip(fns, samples, strict=True):
                started = watch.start()
                fn()
                if sync is not None:
                    sync()
                if round_index:
                    times.append(watch.ms(started))
    return samples


def _rounds_ms(
    fns: Sequence[Callable[[], object]],
    repeats: int,
    sync: Callable[[], None] | None = None,
    *,
    watch: _Stopwatch = _WALL,
) -> list[list[float]]:
    """:func:`_interleaved_ms`, then :data:`_SHORT_ROUNDS` times as many rounds more of the functions whose
    median was under :data:`_SHORT_MS`: runs of tens of microseconds (late tails, early heads) wander by
    10-20% with the scheduler and OpenMP's wake-ups, and more samples of them cost little."""
    times = _interleaved_ms(fns, repeats, sync, watch=watch)
    short = [i for i, samples in enumerate(times) if statistics.median(samples) < _SHORT_MS]
    if short:
        extra = _interleaved_ms([fns[i] for i in short], _SHORT_ROUNDS * repeats, sync, watch=watch)
        for i, samples in zip(short, extra, strict=True):
            times[i] += samples
    return times


_SHORT_MS = 1.0
"""Heads and tails faster than this are timed over :data:`_SHORT_ROUNDS` times as many rounds more."""
_SHORT_ROUNDS = 4

_SPREAD_FLOOR_MS = 1.0
"""Times below this are left out of the spread: scheduler and timer noise dominate them, and they weigh
little in a plan."""


def _spread(samples: Sequence[float]) -> float:
    """How much repeated times of one thing disagree: the interquartile range over the median."""
    if len(samples) < 4:
        return 0.0
    # NOTE: inclusive quartiles: of 5 repeats, one outlier (a page fault, a preempted thread) moves them little
    q1, median, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return (q3 - q1) / median if median >= _SPREAD_FLOOR_MS else 0.0


def monotone(values: Sequence[float], *, increasing: bool, tied: Sequence[bool] = ()) -> list[float]:
    """The closest sequence (least squares) to ``values`` that never decreases (or never increases): the
    pool-adjacent-violators algorithm. A run that breaks the order becomes its mean. ``tied[i]``: value ``i``
    must equal value ``i - 1`` (cuts that carry the same tensors); each tied run counts as its mean, weighted
    by its length."""
    sign = 1.0 if increasing else -1.0
    runs: list[tuple[float, int]] = []  # NOTE: (sum, length) of each tied run, in order
    for index, value in enumerate(values):
        if runs and index < len(tied) and tied[index]:
            total, length = runs[-1]
            runs[-1] = (total + value, length + 1)
        else:
            runs.append((value, 1))
    blocks: list[tuple[float, int]] = []  # NOTE: (mean, size) of each pooled run, in order
    for total, length in runs:
        mean, size = sign * total / length, length
        while blocks and blocks[-1][0] > mean:
            previous, count = blocks.pop()
            mean, size = (previous * count + mean * size) / (count + size), count + size
        blocks.append((mean, size))
    return [sign * mean for mean, size in blocks for _ in range(size)]


def _same_values(first: Sequence[Any], second: Sequence[Any]) -> bool:
    """Whether two cuts carry the same values: as many, each tensor equal to the other's once flattened (a
    ``flatten``, a view or an ``Identity`` between them), each other value equal."""
    if len(first) != len(second):
        return False
    for one, other in zip(first, second, strict=True):
        if isinstance(one, torch.Tensor) and isinstance(other, torch.Tensor):
            if one.numel() != other.numel() or not torch.equal(one.reshape(-1), other.reshape(-1)):
                return False
        elif isinstance(one, torch.Tensor) or isinstance(other, torch.Tensor) or one != other:
            return False
    return True


def profile_model(
    loaded: LoadedModel,
    images: Sequence[bytes] | None = None,
    *,
    images_source: str = "",
    device: str = "cpu",
    all_cuts: bool = False,
    codecs: Sequence[str] = PROFILE_CODECS,
    repeats: int = 5,
    progress: Callable[[str], None] | None = None,
    engine: str = "torch",
    onnx_threads: int = 1,
    openvino_precision: str = "f32",
    cpu_quota: float | Literal["detect"] | None = "detect",
) -> Profile:
    """Measure head, tail, encode and decode times and payload sizes at every candidate cut, here.

    Times are medians over ``repeats`` runs on the first image; payload sizes and codec errors are
    means over all ``images`` (compressed sizes depend on the picture). With no ``images``, it generates
    :data:`GENERATED_PROFILE_IMAGES` pictures and records ``images`` as :data:`GENERATED_IMAGES`, whose
    errors the planner counts :data:`GENERATED_ERROR_FACTOR` times (:attr:`Profile.error_factor`); images
    given are recorded as ``images_source`` says (a folder's name; empty: unsaid, counted once).
    ``cpu_quota`` is the CPU quota in cores this process runs under (``"detect"``: read from its cgroup;
    ``None``: none): with one, every time is the longer of the wall time and the process's CPU time over
    the quota, the time a request sees once the quota throttles it (a short piece of work timed alone
    often fits in one period's quota and runs at full speed).
    """
    quota = cpu_quota_cores() if cpu_quota == "detect" else cpu_quota
    if quota is not None and quota <= 0:
        raise ValueError(f"cpu_quota must be positive cores or None, not {quota}")
    if images is None:
        if images_source:
            raise ValueError(f"images_source {images_source!r} names images, but none were given")
        images, images_source = generated_jpegs(GENERATED_PROFILE_IMAGES), GENERATED_IMAGES
    if not images:
        raise ValueError("profile_model needs at least one image (or None: generated pictures)")
    watch = _Stopwatch(quota)
    graph = loaded.graph()
    graph.logits_classes()  # NOTE: a model the services would refuse is refused here, saying why
    target = torch.device(device)
    loaded.module.to(target)
    resize_size = loaded.preprocessor.resize_size
    decoded = [decode_image(blob, resize_size=resize_size) for blob in images]
    batches = [loaded.preprocessor.batch([image]).to(target) for image in decoded]
    batch = batches[0]
    with torch.inference_mode():
        references = [loaded.module(b).float().cpu() for b in batches]
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine()}
    machine |= {"torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    profile = Profile(
        loaded.name, loaded.digest, device, torch.get_num_threads(), loaded.preprocessor.crop_size, machine
    )
    profile.engine = engine
    profile.precision = openvino_precision if engine == "openvino" else "f32"
    profile.cpu_quota = quota
    profile.images = images_source
    profile.image_decode_ms = _median_ms(partial(decode_image, images[0], resize_size=resize_size), repeats, watch)
    profile.preprocess_ms = _median_ms(partial(loaded.preprocessor.batch, decoded[:1]), repeats, watch)
    common = {"model": loaded.name, "weights": loaded.digest}
    profile.reply_bytes = float(len(encode_logits(references[0], cut=OUTPUT_CUT, **common)))
    candidates = graph.cuts if all_cuts else graph.single_tensor_cuts()
    limits = WireLimits.for_batch(1, mib_per_item=64)
    sync = torch.cuda.synchronize if target.type == "cuda" else None
    timed: list[Callable[[], object]] = []  # head and tail of every cut, timed together below
    measured_codecs: list[tuple[CodecProfile, ...]] = []
    tied: list[bool] = []  # NOTE: each cut: it carries, on every image, what the cut before it carries
    previous: list[tuple[Any, ...]] | None = None
    for cut in candidates:
        if progress is not None:
            progress(cut.name)
        head, tail = _halves(loaded, graph, cut, engine, device, onnx_threads, openvino_precision)
        with torch.inference_mode():
            shipped_all = [tuple(_to(t, torch.device("cpu")) for t in head(b)) for b in batches]
            tied.append(previous is not None and all(map(_same_values, previous, shipped_all)))
            previous = shipped_all
            shipped = tuple(_to(t, target) for t in shipped_all[0])
            timed += [partial(head, batch), partial(tail, *shipped)]
            if cut.name == INPUT_CUT:
                measured = [_profile_images(loaded, images, decoded, limits, repeats, watch)]
            elif cut.name == OUTPUT_CUT:
                measured = []
            else:
                measured = [
                    _profile_codec(codec, cut, shipped_all, tail, target, references, limits, repeats, common, watch)
                    for codec in codecs
                ]
        measured_codecs.append(tuple(measured))
    # NOTE: every round times every cut's head and tail in turn, so a busy moment of the machine hits all
    # cuts alike and cuts that carry the same tensors get the same times.
    if progress is not None:
        progress("timing")
    with torch.inference_mode():
        times = _rounds_ms(timed, repeats, sync, watch=watch)
    heads = [statistics.median(times[2 * index]) for index in range(len(candidates))]
    tails = [statistics.median(times[2 * index + 1]) for index in range(len(candidates))]
    profile.spread = max((_spread(samples) for samples in times), default=0.0)
    # NOTE: a later cut's head runs every node of an earlier cut's head and more (cuts are in the graph's
    # order), and its tail a part of the earlier tail: where noise inverts that order, the times are pooled.
    # Cuts a cheap node apart then agree, as their compute does; cuts that carry the same values (a flatten
    # apart) get the same times.
    heads = monotone(heads, increasing=True, tied=tied)
    tails = monotone(tails, increasing=False, tied=tied)
    for cut, head_ms, tail_ms, codec_profiles in zip(candidates, heads, tails, measured_codecs, strict=True):
        profile.cuts.append(CutProfile(cut.name, cut.index, head_ms, tail_ms, codec_profiles))
    return profile


def _halves(
    loaded: LoadedModel,
    graph: ModelGraph,
    cut: Cut,
    engine: str,
    device: str,
    onnx_threads: int,
    openvino_precision: str = "f32",
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The two halves as the services would run them with ``engine``."""
    if engine == "torch":
        return graph.split(cut)
    from shared.engines import engine_options
    from shared.ort_torch import ort_half_for

    options = engine_options(engine, threads=onnx_threads, device=device, precision=openvino_precision)
    if options is None:  # NOTE: unreachable: engine is not torch here
        raise ValueError(f"engine {engine!r} runs no ONNX half")
    head = ort_half_for(loaded, graph, cut, "head", onnx_dir=None, options=options)
    tail = ort_half_for(loaded, graph, cut, "tail", onnx_dir=None, options=options)
    return head, tail


def _to(value: Any, device: torch.device) -> Any:
    """Tensors to ``device``; the shape integers a cut may carry stay as they are."""
    return value.to(device) if isinstance(value, torch.Tensor) else value


def _profile_images(
    loaded: LoadedModel,
    images: Sequence[bytes],
    decoded: Sequence[Any],
    limits: WireLimits,
    repeats: int,
    watch: _Stopwatch = _WALL,
) -> CodecProfile:
    """Cut ``input``: the received image shipped as is; "decode" is the cloud's whole path to a batch."""
    common = {"model": loaded.name, "weights": loaded.digest}

    def encode(index: int = 0) -> bytes:
        return encode_images([images[index]], [decoded[index]], loaded.preprocessor, codec="image", **common)

    data = encode()
    expected = expected_images("image", loaded.preprocessor.crop_size)

    def decode() -> torch.Tensor:
        payload = decode_payload(data, kind="image", expected=expected, limits=limits, **common)
        return images_from_payload(payload, loaded.preprocessor, ImageLimits(), limits)

    size = statistics.fmean(len(encode(i)) for i in range(len(images)))
    encode_ms, decode_ms = _median_ms(encode, repeats, watch), _median_ms(decode, repeats, watch)
    return CodecProfile("image", float(size), encode_ms, decode_ms, 0.0)


def _profile_codec(
    codec: str,
    cut: Cut,
    shipped_all: Sequence[tuple[torch.Tensor, ...]],
    tail: Callable[..., Any],
    target: torch.device,
    references: Sequence[torch.Tensor],
    limits: WireLimits,
    repeats: int,
    common: dict[str, str],
    watch: _Stopwatch = _WALL,
) -> CodecProfile:
    expected = expected_for_cut(cut)

    def encode(shipped: tuple[torch.Tensor, ...]) -> bytes:
        return encode_activations(shipped, cut, codec=codec, **common)

    def decode(data: bytes) -> Any:
        return decode_payload(data, kind="activations", expected=expected, limits=limits, **common)

    payloads, encode_ms = _timed_over(encode, shipped_all, repeats, watch)
    decoded, decode_ms = _timed_over(decode, payloads, repeats, watch)
    if cut.values:  # NOTE: values such as the batch size are per payload: one tail run each
        outputs = [tail(*(_to(t, target) for t in d.arguments)).float().cpu() for d in decoded]
    else:  # NOTE: one tail run for every image: the same logits, a fraction of the profile's time
        merged = [torch.cat(parts) for parts in zip(*(d.tensors for d in decoded), strict=True)]
        outputs = list(tail(*(_to(t, target) for t in merged)).float().cpu().split(1))
    errors = [
        float((logits - reference).norm() / reference.norm().clamp_min(1e-12))
        for logits, reference in zip(outputs, references, strict=True)
    ]
    size = statistics.fmean(len(p) for p in payloads)
    return CodecProfile(codec, float(size), encode_ms, decode_ms, max(errors))


@dataclass(frozen=True)
class PlanRow:
    cut: str
    codec: str | None
    """``None`` at ``output``: nothing is sent."""
    latency_ms: float
    edge_ms: float
    transfer_ms: float
    cloud_ms: float
    bytes_per_image: float
    relative_l2_error: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def plan(
    edge: Profile,
    cloud: Profile,
    *,
    bandwidth_bps: float,
    rtt_s: float,
    objective: Objective = "latency",
    max_logit_error: float = 1e-2,
    edge_calibration_ms: float = 0.0,
    cloud_calibration_ms: float = 0.0,
) -> list[PlanRow]:
    """Predicted cost of every (cut, codec) pair, best first by ``objective``.

    Lossy codecs are candidates only when their measured relative L2 logit error, times the edge profile's
    :attr:`~Profile.error_factor`, is within ``max_logit_error`` (:func:`fidelity_guard`).
    ``edge_calibration_ms`` and ``cloud_calibration_ms`` are added to each side's profiled compute (a running
    service measures how much more its requests take than its profile said).
    """
    if (edge.model, edge.weights_digest) != (cloud.model, cloud.weights_digest):
        raise ValueError(f"profiles are of different models: {edge.model} vs {cloud.model} (or other weights)")
    tails = {c.name: c for c in cloud.cuts}
    rows = []
    guard = max_logit_error / edge.error_factor
    for cut in edge.cuts:
        remote = tails.get(cut.name)
        if remote is None:
            continue
        image_ms = edge.image_path_ms(cut.name)
        if cut.name == OUTPUT_CUT:
            edge_ms = image_ms + cut.head_ms + edge_calibration_ms
            rows.append(PlanRow(cut.name, None, edge_ms, edge_ms, 0.0, 0.0, 0.0, 0.0))
            continue
        decode_by_codec = {c.codec: c.decode_ms for c in remote.codecs}
        for codec in cut.codecs:
            if codec.relative_l2_error > guard:
                continue
            wire_bytes = (codec.bytes_per_image + cloud.reply_bytes) * FRAMING_OVERHEAD
            transfer_ms = wire_bytes * 8 / bandwidth_bps * 1000 + rtt_s * 1000
            edge_ms = image_ms + cut.head_ms + codec.encode_ms + edge_calibration_ms
            cloud_ms = decode_by_codec.get(codec.codec, codec.decode_ms) + remote.tail_ms + cloud_calibration_ms
            rows.append(
                PlanRow(
                    cut.name,
                    codec.codec,
                    edge_ms + transfer_ms + cloud_ms,
                    edge_ms,
                    transfer_ms,
                    cloud_ms,
                    codec.bytes_per_image,
                    codec.relative_l2_error,
                )
            )
    key = {
        "latency": lambda r: (r.latency_ms, r.bytes_per_image),
        "edge-time": lambda r: (r.edge_ms, r.latency_ms),
        "bytes": lambda r: (r.bytes_per_image, r.latency_ms),
    }[objective]
    return sorted(rows, key=key)


def fidelity_guard(edge: Profile, max_logit_error: float) -> dict[str, Any]:
    """What :func:`plan` admits a lossy codec by: the bound asked for, what the codec errors were measured on,
    how many times they count, and so the largest error as measured that passes."""
    return {
        "max_logit_error": max_logit_error,
        "errors_measured_on": edge.images or "unrecorded",
        "error_factor": edge.error_factor,
        "largest_measured_error_admitted": max_logit_error / edge.error_factor,
    }


def fidelity_guard_note(edge: Profile, max_logit_error: float) -> str | None:
    """One line saying that :func:`plan` admits less than ``max_logit_error`` as measured, when it does."""
    if edge.error_factor == 1.0:
        return None
    admitted = max_logit_error / edge.error_factor
    return (
        f"the codec errors in the edge profile were measured on generated pictures, so they count "
        f"{edge.error_factor:g} times against --max-logit-error {max_logit_error:g}: lossy codecs whose "
        f"'rel L2' as measured exceeds {admitted:g} are left out (profile with --images DIR of photos to "
        "judge them by photos' errors; docs/benchmarks.md, 'Fidelity guard')"
    )


def pareto(rows: Sequence[PlanRow]) -> list[PlanRow]:
    """The rows no other row beats on latency, bytes and edge compute at once."""

    def dominates(a: PlanRow, b: PlanRow) -> bool:
        no_worse = a.latency_ms <= b.latency_ms and a.bytes_per_image <= b.bytes_per_image and a.edge_ms <= b.edge_ms
        better = a.latency_ms < b.latency_ms or a.bytes_per_image < b.bytes_per_image or a.edge_ms < b.edge_ms
        return no_worse and better

    return [row for row in rows if not any(dominates(other, row) for other in rows)]
