"""The cloud's model: decodes any cut's payload, builds (and caches) that cut's tail, runs batches."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import fx

from shared.errors import MalformedPayload, ModelMismatch, UnprocessableContent
from shared.models import LoadedModel
from shared.preprocessing import ImageLimits
from shared.protocol import expected_for_cut, expected_images, images_from_payload
from shared.splitting import INPUT_CUT, ModelGraph
from shared.wire import ExpectedTensor, WireLimits, decode_payload, read_header

T = TypeVar("T")

__all__ = ["INLINE_DECODE_BYTES", "INLINE_TAIL_FLOPS", "CloudModel", "InlineWhenCheap", "TailInput"]

INLINE_DECODE_BYTES = 16 * 1024
"""Uncompressed activations up to this size decode in microseconds: cheaper than a hop to a thread."""
INLINE_TAIL_FLOPS = 40_000_000
"""A CPU tail run of at most this many FLOPs (a classifier layer over a batch: about a millisecond) runs
on the event loop: handing it to a thread costs more, and under load the two threads then convoy on
the GIL (each waits up to the 5 ms switch interval for the other)."""


class InlineWhenCheap(ThreadPoolExecutor):
    """The tail's one-thread executor, except that runs ``cheap(*args)`` says are cheap run in the caller."""

    def __init__(self, cheap: Callable[..., bool]) -> None:
        super().__init__(max_workers=1, thread_name_prefix="tail")
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


@dataclass(frozen=True)
class TailInput:
    """A validated request for the tail: the cut and its input tensors (batch-first)."""

    cut: str
    tensors: tuple[torch.Tensor, ...]

    @property
    def batch_size(self) -> int:
        return int(self.tensors[0].shape[0])


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
    ) -> None:
        self.loaded = loaded
        self.device = torch.device(device)
        self.wire_limits = wire_limits or WireLimits()
        self.image_limits = image_limits or ImageLimits()
        self.graph = ModelGraph(loaded.module, loaded.input_shape)
        self.channels_last = channels_last
        self.autocast = autocast
        self.compile_tails = compile_tails
        loaded.module.to(self.device)
        if channels_last:
            loaded.module.to(memory_format=torch.channels_last)
        self.expected: dict[str, list[ExpectedTensor]] = {
            cut.name: expected_for_cut(cut) for cut in self.graph.cuts if cut.name != INPUT_CUT
        }
        self.num_classes = int(self.graph.cuts[-1].tensors[0].shape[-1])
        self._tails: OrderedDict[str, fx.GraphModule] = OrderedDict()
        self._tail_cache_size = tail_cache_size
        self._lock = threading.Lock()
        self._tail_share = {cut.name: 1.0 - cut.head_flops_share for cut in self.graph.cuts}

    def tail(self, cut: str) -> fx.GraphModule:
        with self._lock:
            if cut in self._tails:
                self._tails.move_to_end(cut)
                return self._tails[cut]
            _, tail = self.graph.split(cut)
            if self.compile_tails:
                tail = torch.compile(tail)  # type: ignore[assignment]
            self._tails[cut] = tail
            while len(self._tails) > self._tail_cache_size:
                self._tails.popitem(last=False)
            return tail

    def cheap_tail(self, cut: str, requests: Sequence[tuple[torch.Tensor, ...]], *_: object) -> bool:
        """Whether running ``cut``'s tail over ``requests`` is cheap enough for the event loop (CPU only)."""
        if self.device.type != "cpu" or self.compile_tails:
            return False
        share = self._tail_share.get(cut)
        if share is None or cut not in self._tails:  # NOTE: a tail's first run builds it: on the thread
            return False
        images = sum(int(r[0].shape[0]) for r in requests)
        return share * self.graph.total_flops * images <= INLINE_TAIL_FLOPS

    def cheap_to_decode(self, body: bytes) -> bool:
        """Whether ``body`` is small activations with a fixed-size codec (no zstd or ANS stage, no image):
        its work is bounded by its size, so it can be decoded on the event loop."""
        if len(body) > INLINE_DECODE_BYTES:
            return False
        metadata, _ = read_header(body, self.wire_limits)
        return metadata.get("kind") == "activations" and "+" not in metadata.get("codec", "+")

    def decode(self, body: bytes) -> TailInput:
        """Validate a request body (activations of any cut, or images for ``input``)."""
        metadata, _ = read_header(body, self.wire_limits)
        kind = metadata.get("kind")
        common = {"model": self.loaded.name, "weights": self.loaded.digest, "limits": self.wire_limits}
        if kind == "image":
            expected = expected_images(metadata.get("codec", ""), self.loaded.preprocessor.crop_size)
            payload = decode_payload(body, kind="image", expected=expected, **common)  # type: ignore[arg-type]
            images = images_from_payload(payload, self.loaded.preprocessor, self.image_limits, self.wire_limits)
            return TailInput(INPUT_CUT, (images,))
        if kind == "activations":
            if metadata.get("cut") == INPUT_CUT:
                raise ModelMismatch("cut 'input' carries images (kind 'image'), not activations")
            payload = decode_payload(body, kind="activations", expected=self.expected, **common)  # type: ignore[arg-type]
            return TailInput(payload.cut, payload.tensors)
        raise MalformedPayload(f"payload kind {kind!r} is not accepted here; send 'activations' or 'image'")

    def run(self, cut: str, requests: Sequence[tuple[torch.Tensor, ...]]) -> list[torch.Tensor]:
        """Run the tail of ``cut`` once over several requests; one logits tensor per request (on CPU)."""
        tail = self.tail(cut)
        sizes = [int(r[0].shape[0]) for r in requests]
        merged = [torch.cat(parts) if len(requests) > 1 else parts[0] for parts in zip(*requests, strict=True)]
        inputs = [self._to_device(t) for t in merged]
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast == "bf16")
        with torch.inference_mode(), autocast:
            try:
                output = tail(*inputs)
            except RuntimeError as exc:
                raise UnprocessableContent(f"the tail of cut {cut!r} cannot run on this input: {exc}") from exc
        if not isinstance(output, torch.Tensor) or output.shape[0] != sum(sizes):
            raise UnprocessableContent(f"the tail of cut {cut!r} did not return one row of logits per image")
        return list(torch.split(output.float().cpu(), sizes))

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            # NOTE: pinned host memory lets the copy run asynchronously with the host thread.
            tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        if self.channels_last and tensor.dim() == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor
