"""Engine ``openvino``: an exported ONNX half compiled by OpenVINO for the CPU.

Imports neither torch nor openvino at import time and needs only numpy and openvino at run time, so the
torch-free edge uses it as it is. Settings are explicit, as for ONNX Runtime: ``INFERENCE_NUM_THREADS``
threads per run, one stream per caller that may run at once (``OvOptions.streams``), the latency hint, and
the inference precision:

* ``f32`` (the default): float32 throughout, within 1e-4 of the torch halves (tests/unit/engines);
* ``bf16``: OpenVINO's bfloat16 kernels where the CPU has them (AVX512-BF16 or AMX). The logits are no
  longer exact (about 1e-1 absolute on resnet18's logits; top-1 agreement with the float32 model measured
  in bench/results/openvino_bf16.json); refused with :class:`EngineUnavailable` on a CPU without bf16.

A compiled model is shared; an ``InferRequest`` is not thread-safe, so each :class:`OvHalf` keeps a bounded
pool of them (``OvOptions.requests``): a caller takes one, runs it and puts it back, and waits while all
are busy. The batch axis stays dynamic, so the cloud's merged batches run on the same compiled model.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = [
    "PRECISIONS",
    "EngineUnavailable",
    "OvHalf",
    "OvOptions",
    "UnloadableModel",
    "check_precision",
    "cpu_capabilities",
    "unloadable",
]

Precision = Literal["f32", "bf16"]
PRECISIONS: tuple[str, ...] = ("f32", "bf16")


class EngineUnavailable(ValueError):
    """The engine cannot run as configured here (not installed, or a precision the CPU lacks)."""


class UnloadableModel(ValueError):
    """The engine refused an ONNX half that was read (the file is damaged, is not ONNX, or holds operators
    or an opset this engine lacks). A missing or unreadable file is the OS's own ``OSError`` instead."""


_MAX_ENGINE_MESSAGE = 400


def unloadable(model: Path | bytes, engine: str, exc: BaseException) -> UnloadableModel:
    """The :class:`UnloadableModel` for ``exc``, an engine's load error, with its message on one line."""
    source = repr(str(model)) if isinstance(model, Path) else f"a {len(model)}-byte model"
    reason = " ".join(str(exc).split())[:_MAX_ENGINE_MESSAGE]
    return UnloadableModel(
        f"{source} is not an ONNX model {engine} can load (damaged, not ONNX, or made for a newer engine): "
        f"{type(exc).__name__}: {reason}"
    )


@dataclass(frozen=True)
class OvOptions:
    """How an OpenVINO compiled model runs."""

    threads: int = 1
    precision: Precision = "f32"
    requests: int = 4
    """Infer requests per half: how many calls run (or wait for a stream) at once."""
    streams: int = 1
    """Runs that execute at once, each on ``threads`` threads of its own. OpenVINO's CPU plugin runs one
    inference at a time per stream, so a service calling a half from N threads needs N streams for them
    to run in parallel (with one, they queue: the edge's two one-thread head workers ran as one)."""
    device: str = "cpu"


def _openvino() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise EngineUnavailable(
            "engine openvino needs the openvino package: install the project's `openvino` extra"
        ) from exc
    return openvino


def cpu_capabilities() -> tuple[str, ...]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of this CPU (``BF16`` among them where it has bf16)."""
    return tuple(_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def check_precision(precision: str, capabilities: tuple[str, ...]) -> None:
    """Refuse a precision this engine does not know, or ``bf16`` on a CPU without it."""
    if precision not in PRECISIONS:
        raise EngineUnavailable(f"unknown openvino precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and "BF16" not in capabilities:
        raise EngineUnavailable(
            "openvino precision bf16 needs a CPU with bfloat16 instructions (AVX512-BF16 or AMX); this one offers "
            f"{', '.join(capabilities) or 'none'}: use precision f32"
        )


class OvHalf:
    """One half compiled by OpenVINO, called with numpy arrays in input order (like ``OrtHalf``)."""

    def __init__(self, model: Path | bytes, options: OvOptions = OvOptions()) -> None:
        if options.device != "cpu":
            raise EngineUnavailable(f"engine openvino runs on the CPU here, not on {options.device!r}")
        if options.threads < 1 or options.requests < 1 or options.streams < 1:
            raise ValueError("openvino threads, requests and streams must be at least 1")
        ov = _openvino()
        core = ov.Core()
        check_precision(options.precision, tuple(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")))
        config = {
            "INFERENCE_NUM_THREADS": options.threads * options.streams,
            "NUM_STREAMS": options.streams,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": options.precision,
        }
        # NOTE: OpenVINO reports every reading and compiling failure as a RuntimeError; only these two calls
        # are the model's: a RuntimeError anywhere else is a bug and is not blamed on the file.
        try:
            if isinstance(model, bytes):
                graph = core.read_model(model, ov.Tensor(np.empty(0, dtype=np.uint8)))
            else:
                graph = core.read_model(str(model))
            self.compiled = core.compile_model(graph, "CPU", config)
        except RuntimeError as exc:
            raise unloadable(model, "OpenVINO", exc) from exc
        self.options = options
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision: str = hint.to_string() if hasattr(hint, "to_string") else str(hint)
        self.providers: tuple[str, ...] = (f"OpenVINO CPU ({options.precision})",)
        self.input_names: tuple[str, ...] = tuple(i.get_any_name() for i in self.compiled.inputs)
        self.output_names: tuple[str, ...] = tuple(o.get_any_name() for o in self.compiled.outputs)
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._slots = threading.BoundedSemaphore(max(options.requests, options.streams))
        self._made = 0
        self._lock = threading.Lock()

    def _take(self) -> Any:
        self._slots.acquire()
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            with self._lock:
                self._made += 1
            return self.compiled.create_infer_request()

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"this half takes {len(self.input_names)} inputs, got {len(inputs)}")
        feed = {i: np.ascontiguousarray(x) for i, x in enumerate(inputs)}
        request = self._take()
        try:
            # NOTE: the results are copies (share_outputs=False): the request's own buffers are reused.
            results = request.infer(feed, share_inputs=True, share_outputs=False)
            outputs = [np.asarray(results[i]) for i in range(len(self.output_names))]
        finally:
            self._idle.put(request)
            self._slots.release()
        return outputs

    @property
    def requests_made(self) -> int:
        """Infer requests created so far (at most ``options.requests``, or ``options.streams`` if more)."""
        return self._made

    def run_named(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self(*(inputs[name] for name in self.input_names)), strict=True))
