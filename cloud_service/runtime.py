"""The cloud's model: decodes any cut's payload, builds (and caches) that cut's tail, runs batches."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from cloud_service.decode_budget import decode_cost
from service_core.image_cost import images_cost
from shared.built_once import BuiltOnce
from shared.engines import Engine, engine_options
from shared.errors import (
    MalformedPayload,
    ModelFailure,
    ModelMismatch,
    NonFiniteOutput,
    ServiceUnavailable,
    SplitInferError,
)
from shared.folding import fold_batchnorm
from shared.image_headers import ImageData
from shared.models import LoadedModel, check_labels
from shared.ort_torch import ort_half_for, verify_exports
from shared.preprocessing import ImageLimits
from shared.protocol import (
    decode_image_payload,
    expected_for_cut,
    expected_images,
    image_blob_views,
    image_blobs,
)
from shared.splitting import INPUT_CUT
from shared.tensor_checks import all_finite
from shared.values import ValueSpec
from shared.wire import ExpectedTensor, WireHeader, WireLimits, decode_read_payload
from shared.wire_cache import HeaderCache, LogitsWriter

T = TypeVar("T")

__all__ = ["INLINE_DECODE_BYTES", "INLINE_TAIL_FLOPS", "CloudModel", "InlineWhenCheap", "TailInput"]

INLINE_DECODE_BYTES = 1024 * 1024
"""Activations with a fixed-size codec up to this size decode on the event loop: a copy and a finiteness
check, 0.2 ms for 3 MB of fp32 and 0.5 ms for 800 KB of int8 (resnet18, one thread), while a hop to a
thread and back costs 0.3-0.6 ms at concurrency 1 (100 KB of fp16: 0.08 ms to decode, 0.65 ms with the
hop)."""
INLINE_TAIL_FLOPS = 40_000_000
"""A CPU tail run of at most this many FLOPs (a classifier layer over a batch: about a millisecond) runs
on the event loop: handing it to a thread costs more, and under load the two threads then convoy on
the GIL (each waits up to the 5 ms switch interval for the other)."""


class InlineWhenCheap(ThreadPoolExecutor):
    """The tail's one-thread executor, except that runs ``cheap(*args)`` says are cheap run in the caller."""

    def __init__(self, cheap: Callable[..., bool], initializer: Callable[[], object] | None = None) -> None:
        super().__init__(max_workers=1, thread_name_prefix="tail", initializer=initializer)
        self._cheap = cheap

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        if not self._cheap(*args):
            return super().submit(fn, *args, **kwargs)
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # NOTE: delivered to the awaiting request, as the pool would
            future.set_exception(exc)
        return future


_IMAGE_DECODES = 2
"""Image payloads decoded at once."""


@dataclass(frozen=True)
class TailInput:
    """A validated request for the tail: the cut and its input tensors (batch-first)."""

    cut: str
    tensors: tuple[torch.Tensor, ...]
    batch_size: int
    """Items (images): a tensor may carry several rows per item (Swin's windows)."""
    decoded_pixels: int = 0
    """Pixels decoded for it (images at cut ``input``; 0 for activations): freed by the time it is returned,
    and the service trims its heap after large ones (service_core.heap)."""


class CloudModel:
    """One loaded model serving every cut of itself."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        device: str = "cpu",
        wire_limits: WireLimits | None = None,
        image_limits: ImageLimits | None = None,
        tail_cache_size: int = 32,
        channels_last: bool = False,
        autocast: str = "none",
        compile_tails: bool = False,
        engine: Engine = "torch",
        onnx_dir: Path | None = None,
        onnx_threads: int = 1,
        openvino_precision: str = "f32",
        fold_bn: bool = False,
    ) -> None:
        self.loaded = loaded
        self.device = torch.device(device)
        self.wire_limits = wire_limits or WireLimits()
        self._headers = HeaderCache(self.wire_limits)
        self._logits = LogitsWriter(loaded.name, loaded.digest)
        self.image_limits = image_limits or ImageLimits()
        self.graph = loaded.graph()
        self.cuts_digest = self.graph.cuts_digest()
        self.channels_last = channels_last
        # NOTE: before the model moves: a refusal reruns the traced graph on the CPU to say why.
        self.num_classes = self.graph.logits_classes()
        self.autocast = autocast
        self.compile_tails = compile_tails
        loaded.module.to(self.device)
        if channels_last:
            loaded.module.to(memory_format=torch.channels_last)
        self.expected: dict[str, list[ExpectedTensor | ValueSpec]] = {
            cut.name: expected_for_cut(cut) for cut in self.graph.cuts if cut.name != INPUT_CUT
        }
        check_labels(loaded.labels, self.num_classes)  # NOTE: unused here, but a wrong file is the user's mistake
        # NOTE: a tail is built when its cut is first asked for (any edge's client can pin any cut): the
        # tails already built are served meanwhile
        self._tails: BuiltOnce[str, Callable[..., torch.Tensor]] = BuiltOnce(self._build_tail, tail_cache_size)
        # engine (issue 20): tails run with ONNX Runtime or OpenVINO from verified exports, one per cut
        self.engine: Engine = engine
        self.onnx_dir = onnx_dir
        self.fold_bn = fold_bn
        self.engine_options = engine_options(engine, threads=onnx_threads, device=device, precision=openvino_precision)
        if self.engine_options is not None and onnx_dir is not None:
            verify_exports(loaded, self.graph, onnx_dir, half="tail")
        # NOTE: images (cut 'input') are decoded in the server's thread pool; each request is bounded by
        # MAX_BATCH_PIXELS, and this bounds how many are decoded at once, so memory stays bounded too.
        self._image_decodes = threading.BoundedSemaphore(_IMAGE_DECODES)
        self._tail_share = {cut.name: 1.0 - cut.head_flops_share for cut in self.graph.cuts}

    def tail(self, cut: str) -> Callable[..., torch.Tensor]:
        """The tail of ``cut``, built now if it is not kept (:attr:`_tails`: builds never hold up lookups)."""
        return self._tails.get(cut)

    def has_tail(self, cut: str) -> bool:
        """Whether the tail of ``cut`` is built (its next run does not build it)."""
        return cut in self._tails

    def _build_tail(self, cut: str) -> Callable[..., torch.Tensor]:
        tail: Callable[..., torch.Tensor]
        if self.engine_options is not None:
            tail = ort_half_for(  # type: ignore[assignment]
                self.loaded,
                self.graph,
                self.graph.cut(cut),
                "tail",
                onnx_dir=self.onnx_dir,
                options=self.engine_options,
            )
        else:
            _, split_tail = self.graph.split(cut)
            tail = fold_batchnorm(split_tail) if self.fold_bn else split_tail
            if self.compile_tails:
                tail = torch.compile(tail)
        return tail

    def cheap_tail(self, cut: str, requests: Sequence[tuple[torch.Tensor, ...]], *_: object) -> bool:
        """Whether running ``cut``'s tail over ``requests`` is cheap enough for the event loop (CPU only)."""
        if self.device.type != "cpu" or self.compile_tails:
            return False
        share = self._tail_share.get(cut)
        if share is None or not self.has_tail(cut):  # NOTE: a tail's first run builds it: on the thread
            return False
        images = sum(int(r[0].shape[0]) for r in requests)
        return share * self.graph.total_flops * images <= INLINE_TAIL_FLOPS

    def read_header(self, body: bytes) -> WireHeader:
        """The body's parsed header (bounded; only typed errors), read once for :meth:`cheap_to_decode` and
        :meth:`decode` (a route's header is parsed once: :class:`HeaderCache`)."""
        return self._headers.read(body)

    def decode_cost(self, body: bytes, header: WireHeader) -> int:
        """The memory that decoding ``body`` (its header read: ``header``) and holding it for the tail takes, as
        the decode budget counts it (:mod:`cloud_service.decode_budget`). Images sent as files (codec
        ``image``) also cost what they decode to, priced from their own headers as an edge prices them
        (:func:`service_core.image_cost.images_cost`): a 116 KB body of three 40-megapixel PNGs decodes to
        475 MB, not to three crops."""
        limits, preprocessor = self.wire_limits, self.loaded.preprocessor
        metadata = header[0]
        cost = decode_cost(metadata, limits.max_decoded_bytes, limits.max_batch, preprocessor.crop_size)
        codec = metadata.get("codec", "")
        if not cost or metadata.get("kind") != "image" or codec.split("+", 1)[0] != "image":
            return cost
        try:
            blobs: Sequence[ImageData]
            if codec == "image":  # NOTE: the pictures as stored: read in place
                blobs = image_blob_views(body, header, limits)
            else:  # NOTE: compressed: decompressed to be read
                common = {"model": self.loaded.name, "weights": self.loaded.digest, "limits": limits}
                expected = expected_images(codec, preprocessor.crop_size)
                payload = decode_read_payload(body, header, kind="image", expected=expected, **common)  # type: ignore[arg-type]
                blobs = image_blobs(payload, limits)
        except SplitInferError:
            return 0  # NOTE: decoding refuses it the same way, before it decodes a picture
        return cost + images_cost(blobs, self.image_limits, preprocessor.resize_size)

    def cheap_to_decode(self, body: bytes, header: WireHeader) -> bool:
        """Whether ``body`` is small activations with a fixed-size codec (no zstd or ANS stage, no image):
        its work is bounded by its size, so it can be decoded on the event loop."""
        if len(body) > INLINE_DECODE_BYTES:
            return False
        metadata, _ = header
        return metadata.get("kind") == "activations" and "+" not in metadata.get("codec", "+")

    def decode(self, body: bytes, header: WireHeader | None = None) -> TailInput:
        """Validate a request body (activations of any cut, or images for ``input``); raises only
        :class:`SplitInferError` subclasses (anything else a malformed body provokes is a 400).
        ``header``: what :meth:`read_header` returned for it, if the caller has it."""
        try:
            return self._decode(body, header or self._headers.read(body))
        except SplitInferError:
            raise
        except (ValueError, RecursionError, TypeError, KeyError, IndexError, OverflowError) as exc:
            raise MalformedPayload(f"payload could not be decoded: {str(exc)[:200]}") from exc

    def _decode(self, body: bytes, header: WireHeader) -> TailInput:
        metadata, _ = header
        kind = metadata.get("kind")
        common = {"model": self.loaded.name, "weights": self.loaded.digest, "limits": self.wire_limits}
        if kind == "image":
            expected = expected_images(metadata.get("codec", ""), self.loaded.preprocessor.crop_size)
            payload = decode_read_payload(body, header, kind="image", expected=expected, **common)  # type: ignore[arg-type]
            with self._image_decodes:
                images, pixels = decode_image_payload(
                    payload, self.loaded.preprocessor, self.image_limits, self.wire_limits
                )
            return TailInput(INPUT_CUT, (images,), int(images.shape[0]), decoded_pixels=pixels)
        if kind == "activations":
            if metadata.get("cut") == INPUT_CUT:
                raise ModelMismatch("cut 'input' carries images (kind 'image'), not activations")
            payload = decode_read_payload(body, header, kind="activations", expected=self.expected, **common)  # type: ignore[arg-type]
            # NOTE: the payload's non-tensor values were checked against the cut; run() recomputes them
            # for the batch it actually runs (several requests merged).
            return TailInput(payload.cut, payload.tensors, payload.batch_size)
        raise MalformedPayload(f"payload kind {kind!r} is not accepted here; send 'activations' or 'image'")

    def encode_logits(self, logits: torch.Tensor, cut: str) -> bytes:
        """The reply's wire payload (:func:`shared.protocol.encode_logits`' bytes, its header written once
        per cut and shape)."""
        return self._logits.write(logits, cut)

    def run(self, cut: str, requests: Sequence[tuple[torch.Tensor, ...]]) -> list[torch.Tensor]:
        """Run the tail of ``cut`` once over several requests; one logits tensor per request (on CPU).

        Tensors are concatenated along their batch-first dimension; the cut's non-tensor values
        (``bs = x.size(0)``...) are computed for the merged batch.
        """
        tail = self.tail(cut)
        spec = self.graph.cut(cut)
        rows = spec.tensors[0].per_item if spec.tensors else 1
        sizes = [int(r[0].shape[0]) // rows for r in requests]
        merged = [torch.cat(parts) if len(requests) > 1 else parts[0] for parts in zip(*requests, strict=True)]
        inputs: list[object] = [self._to_device(t) for t in merged]
        inputs += [value.at(sum(sizes)) for value in spec.values]
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast == "bf16")
        with torch.inference_mode(), autocast:
            try:
                output = tail(*inputs)
            except torch.OutOfMemoryError as exc:
                raise ServiceUnavailable(
                    f"the tail of cut {cut!r} ran out of device memory; retry (maybe with a smaller batch)",
                    retry_after=1,
                ) from exc
            except RuntimeError as exc:
                # NOTE: the input passed every check of the cut's shapes, dtypes and values: a failure in
                # the tail is ours (500), not the client's.
                raise ModelFailure(f"the tail of cut {cut!r} failed: {type(exc).__name__}: {str(exc)[:200]}") from exc
        if not isinstance(output, torch.Tensor) or output.shape[0] != sum(sizes):
            raise ModelFailure(f"the tail of cut {cut!r} did not return one row of logits per image")
        # NOTE: finite inputs can still overflow in the tail (3e38 activations). No head makes such values
        # from an image, and bf16 autocast keeps float32's range: the input's fault, a typed 422.
        if not all_finite(output):
            raise NonFiniteOutput(f"the tail of cut {cut!r} produced non-finite logits")
        return list(torch.split(output.float().cpu(), sizes))

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            # NOTE: pinned host memory lets the copy run asynchronously with the host thread.
            tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        if self.channels_last and tensor.dim() == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor
