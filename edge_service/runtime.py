"""The edge's model: decodes and preprocesses images, runs the head, encodes the payload.

Every method here is blocking (torch, PIL) and is called off the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from shared.built_once import BuiltOnce
from shared.engines import Engine, engine_options
from shared.errors import BadGateway, SplitInferError
from shared.folding import fold_batchnorm
from shared.models import LoadedModel, check_labels
from shared.ort_torch import ort_half_for
from shared.preprocessing import ImageLimits, decode_images
from shared.protocol import encode_activations, encode_images, expected_logits
from shared.splitting import INPUT_CUT, OUTPUT_CUT, Cut
from shared.wire import WireLimits, decode_payload

__all__ = ["EdgeModel", "Prepared", "Route"]


@dataclass(frozen=True)
class Route:
    """One way through the edge: a cut and its wire codec (the head and tail are built on first use)."""

    cut: Cut
    codec: str | None
    """``None`` exactly at ``output``, where nothing is sent."""

    @property
    def runs_everything(self) -> bool:
        return self.cut.name == OUTPUT_CUT


@dataclass
class Prepared:
    """The images of one request on their way through the edge."""

    raw: list[bytes]
    route: Route
    images: list[Image.Image] = field(default_factory=list)
    head_outputs: tuple[Any, ...] = ()
    """The cut's tensors, then its non-tensor values (see :class:`shared.splitting.Cut`)."""
    payload: bytes = b""
    timings_ms: dict[str, float] = field(default_factory=dict)
    decoded_pixels: int = 0
    """What the images decoded to, kept once they are freed (the heap trim after the request reads it)."""


class _Stopwatch:
    def __init__(self, timings: dict[str, float], name: str) -> None:
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *_: object) -> None:
        self.timings[self.name] = self.timings.get(self.name, 0.0) + (time.perf_counter() - self.start) * 1000


class EdgeModel:
    """The model, split at whatever cut a request's route names (the edge's route policy decides which).

    Each request takes its route once and keeps it, so switching the cut while serving never mixes two
    cuts in one request. Splits are built once per cut and kept (they share the parameters).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        image_limits: ImageLimits,
        *,
        engine: Engine = "torch",
        onnx_dir: Path | None = None,
        onnx_threads: int = 1,
        openvino_precision: str = "f32",
        fold_bn: bool = False,
        head_workers: int = 1,
    ) -> None:
        self.loaded = loaded
        self.graph = loaded.graph()
        self.cuts_digest = self.graph.cuts_digest()
        self.image_limits = image_limits
        self.num_classes = self.graph.logits_classes()
        check_labels(loaded.labels, self.num_classes)
        # NOTE: built when a cut is first asked for (any client can pin any cut): the built ones run meanwhile
        self._splits: BuiltOnce[str, tuple[Callable[..., Any], Callable[..., Any]]] = BuiltOnce(self._build_split)
        # engine (issue 20): the head runs with ONNX Runtime or OpenVINO from a verified export, one per cut
        self.engine: Engine = engine
        self.onnx_dir = onnx_dir
        self.fold_bn = fold_bn
        self.engine_options = engine_options(
            engine, threads=onnx_threads, device="cpu", precision=openvino_precision, parallel_runs=head_workers
        )

    def route_for(self, cut: str, codec: str | None) -> Route:
        """The route through ``cut`` with ``codec`` (``ValueError`` with a hint for an unknown cut; the codec
        of ``output`` is ``None``). Cheap: the split is built by the first request that runs it, off the
        event loop."""
        resolved = self.graph.cut(cut)
        return Route(resolved, None if resolved.name == OUTPUT_CUT else codec)

    def build(self, route: Route) -> None:
        """Build the route's head and tail now (at startup: a cut that cannot be split fails here)."""
        self._split(route.cut)

    def _split(self, cut: Cut) -> tuple[Callable[..., Any], Callable[..., Any]]:
        return self._splits.get(cut.name)

    def _build_split(self, name: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
        cut = self.graph.cut(name)
        head, tail = self.graph.split(cut)
        if self.fold_bn and self.engine_options is None:
            return fold_batchnorm(head), fold_batchnorm(tail)
        if self.engine_options is not None and cut.name != INPUT_CUT:
            options = self.engine_options
            return ort_half_for(self.loaded, self.graph, cut, "head", onnx_dir=self.onnx_dir, options=options), tail
        return head, tail

    def prepare(self, raw: Sequence[bytes], route: Route, names: Sequence[str | None] | None = None) -> Prepared:
        """Decode, preprocess and run the head; encode the payload unless the edge does everything.
        ``names`` (the uploaded file names) only make a refused image's error clearer."""
        prepared = Prepared(list(raw), route)
        timings = prepared.timings_ms
        with _Stopwatch(timings, "decode"):
            prepared.images = decode_images(
                raw, self.image_limits, resize_size=self.loaded.preprocessor.resize_size, names=names
            )
        prepared.decoded_pixels = sum(image.width * image.height for image in prepared.images)
        if route.cut.name == INPUT_CUT and route.codec is not None:
            with _Stopwatch(timings, "encode"):
                prepared.payload = encode_images(
                    prepared.raw,
                    prepared.images,
                    self.loaded.preprocessor,
                    model=self.loaded.name,
                    weights=self.loaded.digest,
                    codec=route.codec,
                )
            return prepared
        with _Stopwatch(timings, "preprocess"):
            batch = self.loaded.preprocessor.batch(prepared.images)
        if route.cut.name not in self._splits:  # the route's first request: not part of its head time
            with _Stopwatch(timings, "build"):
                self._split(route.cut)
        with _Stopwatch(timings, "head"), torch.inference_mode():
            head, _ = self._split(route.cut)
            prepared.head_outputs = tuple(head(batch))
        # NOTE: past the head only its tensors are needed (the fallback's tail runs on them): the images and
        # their normalized copy are freed now, not when the cloud has answered
        prepared.images = []
        del batch
        if route.codec is not None:
            with _Stopwatch(timings, "encode"):
                prepared.payload = encode_activations(
                    prepared.head_outputs,
                    route.cut,
                    model=self.loaded.name,
                    weights=self.loaded.digest,
                    codec=route.codec,
                )
        return prepared

    def finish_locally(self, prepared: Prepared) -> torch.Tensor:
        """Run the tail on the edge (cut ``output``, or the fallback when the cloud fails)."""
        with _Stopwatch(prepared.timings_ms, "tail"), torch.inference_mode():
            route = prepared.route
            if route.runs_everything:
                logits: torch.Tensor = prepared.head_outputs[0]
                return logits.float()
            inputs = prepared.head_outputs
            if route.cut.name == INPUT_CUT:
                inputs = (self.loaded.preprocessor.batch(prepared.images),)
            _, tail = self._split(route.cut)
            output: torch.Tensor = tail(*inputs)
            return output.float()

    def decode_logits(self, body: bytes, batch_size: int, cut: str) -> torch.Tensor:
        """The cloud's reply to a payload sent at ``cut``; anything wrong with it is the cloud's fault (502),
        logits it says it computed at another cut included (a confused cloud, or a proxy mixing replies)."""
        try:
            payload = decode_payload(
                body,
                kind="logits",
                model=self.loaded.name,
                weights=self.loaded.digest,
                expected=expected_logits(self.num_classes),
                limits=WireLimits.for_batch(max(batch_size, 1)),
            )
        except SplitInferError as exc:
            raise BadGateway(f"the cloud's reply is not usable: {exc.detail}") from exc
        if payload.cut != cut:
            raise BadGateway(f"the cloud's reply holds logits of cut {payload.cut!r}; this edge sent cut {cut!r}")
        logits = payload.tensors[0]
        if logits.shape[0] != batch_size:
            raise BadGateway(f"the cloud returned {logits.shape[0]} rows of logits for {batch_size} images")
        return logits
