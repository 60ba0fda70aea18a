"""Engines that run a half: ``torch`` (the FX halves as they are), ``onnxruntime`` or ``openvino`` (an exported
ONNX file; the OpenVINO half is :class:`shared.ov_engine.OvHalf`).

This module imports neither torch nor onnxruntime at import time; :class:`OrtHalf` needs onnxruntime and
numpy only, so the torch-free edge uses it as it is. Thread settings are always explicit: one
``InferenceSession`` runs with ``intra_op_threads`` threads, one inter-op thread and sequential execution,
so a service's thread budget is what its settings say. ``device`` ``cuda``/``cuda:N`` puts the CUDA
execution provider first when this onnxruntime build has it (and says so in :attr:`OrtHalf.providers`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from shared.ov_engine import (
    EngineUnavailable,
    OvHalf,
    OvOptions,
    UnloadableModel,
    check_precision,
    cpu_capabilities,
    unloadable,
)

__all__ = [
    "ENGINES",
    "Engine",
    "EngineOptions",
    "EngineUnavailable",
    "OnnxHalf",
    "OrtHalf",
    "OrtOptions",
    "SessionCache",
    "UnloadableModel",
    "engine_options",
    "open_half",
    "providers_for",
]

Engine = Literal["torch", "onnxruntime", "openvino"]
ENGINES: tuple[str, ...] = ("torch", "onnxruntime", "openvino")


@dataclass(frozen=True)
class OrtOptions:
    """How an ONNX Runtime session runs."""

    intra_op_threads: int = 1
    device: str = "cpu"
    optimization: Literal["all", "extended", "basic", "disabled"] = "all"


def providers_for(device: str) -> list[str | tuple[str, dict[str, Any]]]:
    """The execution providers for ``device``: CUDA first where this build has it, CPU always last."""
    import onnxruntime as ort

    providers: list[str | tuple[str, dict[str, Any]]] = []
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        index = int(device.partition(":")[2] or 0)
        providers.append(("CUDAExecutionProvider", {"device_id": index}))
    providers.append("CPUExecutionProvider")
    return providers


class OrtHalf:
    """An ONNX Runtime session for one half, called with numpy arrays in input order."""

    def __init__(self, model: Path | bytes, options: OrtOptions = OrtOptions()) -> None:
        import onnxruntime as ort

        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.intra_op_threads
        session_options.inter_op_num_threads = 1
        session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session_options.graph_optimization_level = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }[options.optimization]
        source = str(model) if isinstance(model, Path) else model
        try:
            self.session = ort.InferenceSession(source, session_options, providers=providers_for(options.device))
        except Exception as exc:
            # NOTE: ONNX Runtime's own errors (InvalidProtobuf, InvalidGraph, NotImplemented, ...) come from its
            # binding and derive from Exception only; anything else (a TypeError, ...) is a bug and goes on.
            if not type(exc).__module__.startswith("onnxruntime."):
                raise
            raise unloadable(model, "ONNX Runtime", exc) from exc
        self.providers: tuple[str, ...] = tuple(self.session.get_providers())
        self.input_names: tuple[str, ...] = tuple(i.name for i in self.session.get_inputs())
        self.output_names: tuple[str, ...] = tuple(o.name for o in self.session.get_outputs())

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"this half takes {len(self.input_names)} inputs, got {len(inputs)}")
        feed = {name: np.ascontiguousarray(x) for name, x in zip(self.input_names, inputs, strict=True)}
        outputs = self.session.run(list(self.output_names), feed)
        return [np.asarray(o) for o in outputs]

    def run_named(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self(*(inputs[name] for name in self.input_names)), strict=True))


EngineOptions = OrtOptions | OvOptions
"""The settings of an engine that runs an exported ONNX half."""
OnnxHalf = OrtHalf | OvHalf
"""An exported ONNX half on its engine: numpy arrays in input order, a list of arrays out."""


def engine_options(
    engine: str, *, threads: int = 1, device: str = "cpu", precision: str = "f32", parallel_runs: int = 1
) -> EngineOptions | None:
    """The options of ``engine`` for a service's settings (``None`` for ``torch``); raises
    :class:`EngineUnavailable` for openvino off the CPU, or at a precision this CPU lacks. ``parallel_runs``:
    how many threads of the service call one half at once (OpenVINO gets a stream each; an ONNX Runtime
    session runs concurrent calls on their callers' threads anyway)."""
    if engine == "torch":
        return None
    if engine == "onnxruntime":
        return OrtOptions(intra_op_threads=threads, device=device)
    if engine == "openvino":
        if device != "cpu":
            raise EngineUnavailable(f"engine openvino runs on the CPU here, not on {device!r}: use onnxruntime")
        check_precision(precision, cpu_capabilities())  # NOTE: at startup, not at the first request
        return OvOptions(
            threads=threads,
            device=device,
            precision=precision,  # type: ignore[arg-type]
            streams=parallel_runs,
        )
    raise ValueError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")


def open_half(model: Path | bytes, options: EngineOptions) -> OnnxHalf:
    """The ONNX half ``model`` on the engine that ``options`` configure. A file that is missing, unreadable or a
    folder raises the OS's ``OSError`` (``FileNotFoundError``, ``PermissionError``, ``IsADirectoryError``); one
    the engine refuses, :class:`UnloadableModel`."""
    if isinstance(model, Path):
        with model.open("rb"):  # NOTE: the OS says what is wrong with the path, not the engine's load error
            pass
    if isinstance(options, OvOptions):
        return OvHalf(model, options)
    return OrtHalf(model, options)


class SessionCache:
    """Sessions by key (a cut), built once each, the least recently used dropped beyond ``size``."""

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._sessions: dict[str, OrtHalf] = {}
        self._lock = threading.Lock()

    def get(self, key: str, build: Callable[[], OrtHalf]) -> OrtHalf:
        with self._lock:
            half = self._sessions.pop(key, None)
            if half is None:
                half = build()
            self._sessions[key] = half
            while len(self._sessions) > self.size:
                self._sessions.pop(next(iter(self._sessions)))
            return half

    def keys(self) -> Sequence[str]:
        return list(self._sessions)
