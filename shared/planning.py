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

import itertools
import json
import logging
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from torch import fx

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
from shared.splitting import INPUT_CUT, OUTPUT_CUT, Cut, ModelGraph
from shared.wire import WireLimits, decode_payload

__all__ = [
    "CodecProfile",
    "CutProfile",
    "FRAMING_OVERHEAD",
    "PROFILE_CODECS",
    "PlanRow",
    "Profile",
    "ProgressCallback",
    "SPREAD_WARNING",
    "pareto",
    "plan",
    "profile_model",
    "relative_spread",
]

logger = logging.getLogger(__name__)

Objective = Literal["latency", "edge-time", "bytes"]
PROFILE_CODECS = ("fp32", "fp16", "int8+zstd", "int6+ans", "budget10+ans", "budget20+ans")
"""Profiled at every cut; the planner keeps a lossy one only where its measured logit error passes the guard."""
# Bytes on the link per payload byte: TCP/IPv4 (with timestamps) in Ethernet frames carry 1448 bytes
# of data in 1514 bytes.
FRAMING_OVERHEAD = 1514 / 1448
SPREAD_WARNING = 0.2
"""A profile whose whole-model time has a larger relative interquartile range is logged as noisy."""
ProgressCallback = Callable[[str, int, int], None]
"""Called as ``progress(stage, done, total)`` while a profile is measured."""
_COMPUTE_OPS = ("call_function", "call_method", "call_module")


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
    total_ms: float = 0.0  # the whole model, node by node (median of the passes)
    spread: float = 0.0  # relative interquartile range of the whole-model time over the passes

    def edge_overhead_ms(self, cut: str) -> float:
        """What the edge spends on the image before the head runs at ``cut``."""
        return self.image_decode_ms + (0.0 if cut == INPUT_CUT else self.preprocess_ms)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        data = json.loads(Path(path).read_text())
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
        return cls(**data, cuts=cuts)


class _NodeTimer(fx.Interpreter):
    """One pass over the graph that times every compute node (synchronizing the device around each)."""

    def __init__(self, module: fx.GraphModule, sync: Callable[[], None]) -> None:
        super().__init__(module)
        self._sync = sync
        self.times: dict[str, float] = {}

    def run_node(self, n: fx.Node) -> Any:
        if n.op not in _COMPUTE_OPS:
            return super().run_node(n)
        self._sync()
        started = time.perf_counter()
        result = super().run_node(n)
        self._sync()
        self.times[n.name] = (time.perf_counter() - started) * 1000
        return result


class _Recorder(fx.Interpreter):
    """One pass over the graph that keeps the values named in ``keep`` (what crosses the profiled cuts)."""

    def __init__(self, module: fx.GraphModule, keep: set[str]) -> None:
        super().__init__(module)
        self._keep = keep
        self.values: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if n.name in self._keep:
            self.values[n.name] = result
        return result


@dataclass
class _CodecJob:
    """One (cut, codec) to profile: timed encode and decode of the first image, sizes over all images, and
    the tensors that measure its error (the first images' originals, and the same decoded)."""

    codec: str
    encode: Callable[[], object]
    decode: Callable[[], object]
    bytes_per_image: float
    originals: list[tuple[torch.Tensor, ...]] = field(default_factory=list)
    received: list[tuple[torch.Tensor, ...]] = field(default_factory=list)

    @property
    def lossless(self) -> bool:
        pairs = zip(self.received, self.originals, strict=True)
        return all(torch.equal(a, b) for r, o in pairs for a, b in zip(r, o, strict=True))


def _synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return partial(torch.cuda.synchronize, device)
    return lambda: None


def _timed_ms(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    sync()
    started = time.perf_counter()
    fn()
    sync()
    return (time.perf_counter() - started) * 1000


def relative_spread(samples: Sequence[float]) -> float:
    """Interquartile range over the median (0: steady; 1: the timings vary as much as they measure)."""
    middle = max(statistics.median(samples), 1e-9)
    if len(samples) < 4:
        return (max(samples) - min(samples)) / middle
    q1, _, q3 = statistics.quantiles(samples, n=4)
    return (q3 - q1) / middle


def profile_model(
    loaded: LoadedModel,
    images: Sequence[bytes],
    *,
    device: str = "cpu",
    all_cuts: bool = False,
    codecs: Sequence[str] = PROFILE_CODECS,
    repeats: int = 5,
    warmup: int = 2,
    codec_repeats: int = 2,
    error_images: int = 1,
    progress: ProgressCallback | None = None,
) -> Profile:
    """Measure head, tail, encode and decode times and payload sizes at every candidate cut, here.

    Head and tail times come from per-node timings: each repeat is one pass over the whole graph that
    times every node (synchronizing the device around each), a cut's head time is the prefix sum of its
    nodes' times in that pass and its tail time the rest. Every cut is measured in the same passes, and
    cuts that differ by a cheap node (a ReLU, a flatten) get consistent times by construction. Encode
    and decode times (first image) are measured round-robin over every (cut, codec), one round in each
    of the first ``codec_repeats`` repeats, interleaved with the graph passes, after ``warmup`` untimed
    passes (the codecs are warmed up by measuring their sizes and errors). Times are medians. Payload
    sizes are means over all ``images`` (compressed sizes depend on the picture); a codec's error is the
    worst over the first ``error_images`` images (one batched tail run per cut) of the tail's output
    on decoded activations against its output on the original ones. ``profile.spread`` is the relative
    interquartile range of the whole-model time; above :data:`SPREAD_WARNING` a warning is logged.
    """
    if repeats < 1 or warmup < 0 or codec_repeats < 1 or error_images < 1:
        raise ValueError("repeats, codec_repeats and error_images must be >= 1 and warmup >= 0")
    codec_repeats = min(codec_repeats, repeats)
    report: ProgressCallback = progress or _no_progress
    graph = ModelGraph(loaded.module, loaded.input_shape)
    target = torch.device(device)
    sync = _synchronizer(target)
    loaded.module.to(target)
    decoded = [decode_image(blob) for blob in images]
    batches = [loaded.preprocessor.batch([image]).to(target) for image in decoded]
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine()}
    machine |= {"torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    profile = Profile(
        loaded.name, loaded.digest, device, torch.get_num_threads(), loaded.preprocessor.crop_size, machine
    )
    common = {"model": loaded.name, "weights": loaded.digest}
    candidates = graph.cuts if all_cuts else graph.single_tensor_cuts()
    compute = [n.name for n in graph.traced.graph.nodes if n.op in _COMPUTE_OPS]
    was_training = loaded.module.training
    loaded.module.eval()
    try:
        with torch.inference_mode():
            logits = loaded.module(batches[0]).float().cpu()
            profile.reply_bytes = float(len(encode_logits(logits, cut=OUTPUT_CUT, **common)))
            builders = _codec_jobs(loaded, graph, candidates, images, decoded, batches, codecs, error_images, common)
            steps = len(builders) + warmup + repeats
            # NOTE: building a job encodes every image and measuring its error decodes them: that is the
            # codecs' warm-up, so their timed rounds below need none of their own.
            jobs: dict[tuple[str, str], _CodecJob] = {}
            for step, (pair, build) in enumerate(builders.items()):
                report(f"codecs at {pair[0]}", step, steps)
                jobs[pair] = build()
            errors = _codec_errors(graph, jobs, target)
            timed: dict[str, Callable[[], object]] = {
                "image decode": partial(decode_image, images[0]),
                "preprocess": partial(loaded.preprocessor.batch, decoded[:1]),
            }
            for (cut_name, _), job in jobs.items():
                timed[f"{cut_name}/{job.codec}/encode"] = job.encode
                timed[f"{cut_name}/{job.codec}/decode"] = job.decode
            timer = _NodeTimer(graph.traced.graph_module, sync)
            for step in range(warmup):
                report("warming up", len(builders) + step, steps)
                timer.run(batches[0])
                timed["image decode"]()
                timed["preprocess"]()
            passes: list[list[float]] = []
            samples: dict[str, list[float]] = {key: [] for key in timed}
            for step in range(repeats):
                report("timing every node and codec", len(builders) + warmup + step, steps)
                timer.run(batches[0])
                passes.append(list(itertools.accumulate((timer.times[name] for name in compute), initial=0.0)))
                for key, fn in timed.items():
                    if step < codec_repeats or key in ("image decode", "preprocess"):
                        samples[key].append(_timed_ms(fn, sync))
            report("done", steps, steps)
    finally:
        loaded.module.train(was_training)
    totals = [p[-1] for p in passes]
    profile.total_ms = statistics.median(totals)
    profile.spread = relative_spread(totals)
    if profile.spread > SPREAD_WARNING:
        logger.warning(
            "the profile of %s is noisy: the whole model took %.1f to %.1f ms over %d passes (spread %.0f%%); "
            "the machine is busy: profile again when it is idle, or with more repeats",
            loaded.name,
            min(totals),
            max(totals),
            len(totals),
            profile.spread * 100,
        )
    profile.image_decode_ms = statistics.median(samples["image decode"])
    profile.preprocess_ms = statistics.median(samples["preprocess"])
    for cut in candidates:
        measured = tuple(
            CodecProfile(
                job.codec,
                job.bytes_per_image,
                statistics.median(samples[f"{cut_name}/{job.codec}/encode"]),
                statistics.median(samples[f"{cut_name}/{job.codec}/decode"]),
                errors[(cut_name, job.codec)],
            )
            for (cut_name, _), job in jobs.items()
            if cut_name == cut.name
        )
        head_ms = statistics.median(p[cut.position] for p in passes)
        tail_ms = statistics.median(p[-1] - p[cut.position] for p in passes)
        profile.cuts.append(CutProfile(cut.name, cut.index, head_ms, tail_ms, measured))
    return profile


def _no_progress(stage: str, done: int, total: int) -> None:
    """The default progress callback: report nothing."""


def _codec_jobs(
    loaded: LoadedModel,
    graph: ModelGraph,
    candidates: Sequence[Cut],
    images: Sequence[bytes],
    decoded: Sequence[Any],
    batches: Sequence[torch.Tensor],
    codecs: Sequence[str],
    error_images: int,
    common: dict[str, str],
) -> dict[tuple[str, str], Callable[[], _CodecJob]]:
    """What builds every (cut, codec) to profile. The tensors crossing every cut come from one batched pass."""
    keep = {t.name for cut in candidates for t in cut.tensors}
    recorder = _Recorder(graph.traced.graph_module, keep)
    recorder.run(torch.cat(list(batches)))  # NOTE: one batched pass: each image's tensors are its rows
    shipped_by_image = [
        {name: value[index : index + 1].cpu().clone() for name, value in recorder.values.items()}
        for index in range(len(batches))
    ]
    limits = WireLimits.for_batch(1, mib_per_item=64)
    jobs: dict[tuple[str, str], Callable[[], _CodecJob]] = {}
    for cut in candidates:
        if cut.name == OUTPUT_CUT:
            continue
        if cut.name == INPUT_CUT:
            jobs[(cut.name, "image")] = partial(_image_job, loaded, images, decoded, limits, common)
            continue
        shipped = [tuple(values[t.name] for t in cut.tensors) for values in shipped_by_image]
        for codec in codecs:
            jobs[(cut.name, codec)] = partial(_activation_job, cut, codec, shipped, error_images, limits, common)
    return jobs


def _image_job(
    loaded: LoadedModel,
    images: Sequence[bytes],
    decoded: Sequence[Any],
    limits: WireLimits,
    common: dict[str, str],
) -> _CodecJob:
    """Cut ``input``: the received image shipped as is; "decode" is the cloud's whole path to a batch."""

    def encode(index: int = 0) -> bytes:
        return encode_images([images[index]], [decoded[index]], loaded.preprocessor, codec="image", **common)

    data = encode()
    expected = expected_images("image", loaded.preprocessor.crop_size)

    def decode() -> torch.Tensor:
        payload = decode_payload(data, kind="image", expected=expected, limits=limits, **common)
        return images_from_payload(payload, loaded.preprocessor, ImageLimits(), limits)

    size = statistics.fmean(len(encode(i)) for i in range(len(images)))
    return _CodecJob("image", encode, decode, float(size))


def _activation_job(
    cut: Cut,
    codec: str,
    shipped: Sequence[tuple[torch.Tensor, ...]],
    error_images: int,
    limits: WireLimits,
    common: dict[str, str],
) -> _CodecJob:
    expected = expected_for_cut(cut)
    payloads = [encode_activations(tensors, cut, codec=codec, **common) for tensors in shipped]

    def decode(data: bytes = payloads[0]) -> tuple[torch.Tensor, ...]:
        return decode_payload(data, kind="activations", expected=expected, limits=limits, **common).tensors

    return _CodecJob(
        codec,
        partial(encode_activations, shipped[0], cut, codec=codec, **common),
        decode,
        statistics.fmean(len(p) for p in payloads),
        originals=list(shipped[:error_images]),
        received=[decode(data) for data in payloads[:error_images]],
    )


def _codec_errors(
    graph: ModelGraph, jobs: dict[tuple[str, str], _CodecJob], target: torch.device
) -> dict[tuple[str, str], float]:
    """Each codec's worst relative L2 logit error: per cut, one tail run over the original tensors and
    every lossy codec's decoded ones in one batch (a lossless codec needs no run)."""
    errors = {pair: 0.0 for pair, job in jobs.items() if job.lossless}
    lossy_by_cut: dict[str, list[tuple[tuple[str, str], _CodecJob]]] = {}
    for pair, job in jobs.items():
        if pair not in errors:
            lossy_by_cut.setdefault(pair[0], []).append((pair, job))
    for cut_name, lossy in lossy_by_cut.items():
        _, tail = graph.split(cut_name)
        originals = lossy[0][1].originals
        rows = [*originals, *(tensors for _, job in lossy for tensors in job.received)]
        inputs = [torch.cat(parts).to(target) for parts in zip(*rows, strict=True)]
        with torch.inference_mode():
            logits = tail(*inputs).float().cpu().flatten(1)
        count = len(originals)
        reference = logits[:count]
        scale = reference.norm(dim=1).clamp_min(1e-12)
        for index, (pair, _) in enumerate(lossy, start=1):
            restored = logits[index * count : (index + 1) * count]
            errors[pair] = float(((restored - reference).norm(dim=1) / scale).max())
    return errors


@dataclass(frozen=True)
class PlanRow:
    cut: str
    codec: str
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
    edge_overhead_ms: float = 0.0,
    cloud_overhead_ms: float = 0.0,
) -> list[PlanRow]:
    """Predicted cost of every (cut, codec) pair, best first by ``objective``.

    Lossy codecs are candidates only when their measured relative L2 logit error is within
    ``max_logit_error``. ``edge_overhead_ms`` and ``cloud_overhead_ms`` are added to each side's
    profiled compute (a running service measures how much more its requests take than its profile said).
    """
    if (edge.model, edge.weights_digest) != (cloud.model, cloud.weights_digest):
        raise ValueError(f"profiles are of different models: {edge.model} vs {cloud.model} (or other weights)")
    tails = {c.name: c for c in cloud.cuts}
    rows = []
    for cut in edge.cuts:
        remote = tails.get(cut.name)
        if remote is None:
            continue
        image_ms = edge.edge_overhead_ms(cut.name)
        if cut.name == OUTPUT_CUT:
            edge_ms = image_ms + cut.head_ms + edge_overhead_ms
            rows.append(PlanRow(cut.name, "-", edge_ms, edge_ms, 0.0, 0.0, 0.0, 0.0))
            continue
        decode_by_codec = {c.codec: c.decode_ms for c in remote.codecs}
        for codec in cut.codecs:
            if codec.relative_l2_error > max_logit_error:
                continue
            wire_bytes = (codec.bytes_per_image + cloud.reply_bytes) * FRAMING_OVERHEAD
            transfer_ms = wire_bytes * 8 / bandwidth_bps * 1000 + rtt_s * 1000
            edge_ms = image_ms + cut.head_ms + codec.encode_ms + edge_overhead_ms
            cloud_ms = decode_by_codec.get(codec.codec, codec.decode_ms) + remote.tail_ms + cloud_overhead_ms
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


def pareto(rows: Sequence[PlanRow]) -> list[PlanRow]:
    """The rows no other row beats on latency, bytes and edge compute at once."""

    def dominates(a: PlanRow, b: PlanRow) -> bool:
        no_worse = a.latency_ms <= b.latency_ms and a.bytes_per_image <= b.bytes_per_image and a.edge_ms <= b.edge_ms
        better = a.latency_ms < b.latency_ms or a.bytes_per_image < b.bytes_per_image or a.edge_ms < b.edge_ms
        return no_worse and better

    return [row for row in rows if not any(dominates(other, row) for other in rows)]
