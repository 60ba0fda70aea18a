"""Export the head and the tail of a cut as ONNX, checked against the torch halves, with a manifest.

Each half is exported with a dynamic batch axis and the tensors alive across the cut as named outputs
(head) and inputs (tail), named as on the wire. Both are then run with ONNX Runtime at batch sizes 1 and
2 on a seeded input (the tail on the torch head's outputs) and compared with the torch halves; the
largest absolute difference is recorded in the manifest and an export beyond ``tolerance`` (absolute for
outputs up to 1 in magnitude, relative to the largest output beyond) raises :class:`ExportError`.
BatchNorm layers are folded into the preceding convolutions by the exporter (eval mode, constant
folding), the rest of the fusion is ONNX Runtime's.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shared.engines import OrtHalf, OrtOptions
from shared.onnx_manifest import (
    BATCH_DIM,
    HEAD_FILE,
    INPUT_NAME,
    LOGITS_NAME,
    TAIL_FILE,
    HalfSpec,
    Manifest,
    OnnxTensor,
)
from shared.splitting import Cut, ModelGraph

__all__ = ["DEFAULT_OPSET", "ExportError", "ExportedSplit", "cut_tensors", "export_half", "export_split"]

DEFAULT_OPSET = 17
CHECK_BATCHES = (1, 2)


class ExportError(RuntimeError):
    """A half could not be exported, or the export disagrees with torch beyond the tolerance."""


@dataclass(frozen=True)
class ExportedSplit:
    """The bytes of both halves and their manifest (not yet written anywhere)."""

    manifest: Manifest
    head: bytes
    tail: bytes

    def write(self, directory: Path) -> Path:
        """Write ``head.onnx``, ``tail.onnx`` and ``manifest.json`` into ``directory``; returns the manifest path."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / HEAD_FILE).write_bytes(self.head)
        (directory / TAIL_FILE).write_bytes(self.tail)
        return self.manifest.write(directory)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def cut_tensors(cut: Cut) -> tuple[OnnxTensor, ...]:
    """The cut's tensors as the manifest names them (batch axis ``batch``)."""
    return tuple(OnnxTensor(t.name, _dtype_name(t.dtype), (BATCH_DIM, *t.shape[1:])) for t in cut.tensors)


def _unique_input_name(cut: Cut) -> str:
    names = {t.name for t in cut.tensors}
    return INPUT_NAME if INPUT_NAME not in names else f"{INPUT_NAME}_image"


class _Identity(nn.Module):
    """A half that runs nothing (the head of ``input``, the tail of ``output``): ONNX needs a node."""

    def forward(self, *inputs: torch.Tensor) -> Any:
        outputs = tuple(x.clone() for x in inputs)
        return outputs if len(outputs) > 1 else outputs[0]


def export_half(
    module: nn.Module,
    examples: Sequence[torch.Tensor],
    input_names: Sequence[str],
    output_names: Sequence[str],
    *,
    opset: int = DEFAULT_OPSET,
) -> bytes:
    """One half as ONNX bytes, every input and output with a dynamic batch axis."""
    axes = {name: {0: BATCH_DIM} for name in [*input_names, *output_names]}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # NOTE: the TorchScript-based exporter warns about its own future; it is the one that handles
        # every FX half here in well under a second (the dynamo exporter takes several per half).
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                tuple(examples),
                buffer,  # type: ignore[arg-type]
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        except Exception as exc:  # the exporter raises many unrelated types
            raise ExportError(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
    return buffer.getvalue()


def _max_error(half: OrtHalf, reference: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor]) -> tuple[float, float]:
    """``(max |onnxruntime - torch|, max |torch|)`` over every output."""
    got = half(*(x.numpy() for x in inputs))
    if len(got) != len(reference):
        raise ExportError(f"the ONNX half returns {len(got)} tensors; torch returns {len(reference)}")
    worst = scale = 0.0
    for ours, theirs in zip(got, reference, strict=True):
        want = theirs.numpy()
        if ours.shape != want.shape:
            raise ExportError(f"the ONNX half returns shape {list(ours.shape)}; torch returns {list(want.shape)}")
        if ours.size:
            worst = max(worst, float(np.max(np.abs(ours.astype(np.float64) - want.astype(np.float64)))))
            scale = max(scale, float(np.max(np.abs(want.astype(np.float64)))))
    return worst, scale


def _as_tuple(value: Any) -> tuple[torch.Tensor, ...]:
    return tuple(value) if isinstance(value, tuple | list) else (value,)


class _TensorsOnly(nn.Module):
    """A head whose cut also carries non-tensor values (``bs = x.size(0)``): its tensors only. The values
    are functions of the batch size (:class:`shared.splitting.ValueSpec`), recomputed wherever needed."""

    def __init__(self, head: nn.Module, tensors: int) -> None:
        super().__init__()
        self.head, self.tensors = head, tensors

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _as_tuple(self.head(x))[: self.tensors]


class _ValuesFromBatch(nn.Module):
    """A tail that takes the cut's tensors only and computes the cut's values from their batch axis, so the
    exported graph reads the batch size at run time instead of baking in the example's."""

    def __init__(self, tail: nn.Module, cut: Cut) -> None:
        super().__init__()
        self.tail, self.values, self.per_item = tail, cut.values, cut.tensors[0].per_item

    def forward(self, *tensors: torch.Tensor) -> Any:
        batch = tensors[0].shape[0] // self.per_item
        return self.tail(*tensors, *(value.at(batch) for value in self.values))


def export_split(
    graph: ModelGraph,
    cut: str | int | Cut,
    *,
    model: str,
    weights: str,
    preprocessing: dict[str, Any],
    labels: Sequence[str] = (),
    tolerance: float = 1e-4,
    opset: int = DEFAULT_OPSET,
    seed: int = 0,
    examples: torch.Tensor | None = None,
) -> ExportedSplit:
    """Export ``cut`` of ``graph``'s model and check both halves with ONNX Runtime (1 thread).

    ``examples`` (N x C x H x W, N >= 2) is the input the halves are checked on; by default a seeded
    standard-normal batch (inputs the size of normalized images). Raises :class:`ExportError` when a
    half cannot be exported or differs from torch by more than ``tolerance``.
    """
    resolved = graph.cut(cut)
    was_training = graph.model.training
    graph.model.eval()
    try:
        head, tail = graph.split(resolved)
        head.eval()
        tail.eval()
        if examples is None:
            shape = (max(CHECK_BATCHES), *graph.input_shape[1:])
            examples = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        names = [t.name for t in resolved.tensors]
        input_name = _unique_input_name(resolved)
        if resolved.values:  # NOTE: the ONNX halves carry the tensors; the values follow from the batch size
            # NOTE: eval() as well: the exporter restores the training flag of the module it is given, recursively,
            # and a fresh wrapper's (True) would put the model's shared BatchNorms into training mode.
            head = _TensorsOnly(head, len(names)).eval()  # type: ignore[assignment]
            tail = _ValuesFromBatch(tail, resolved).eval()  # type: ignore[assignment]
        with torch.no_grad():
            crossing = _as_tuple(head(examples))
            logits = tail(*(t.clone() for t in crossing))
        head_module: nn.Module = head if resolved.position > graph.cuts[0].position else _Identity()
        tail_module: nn.Module = tail if resolved.position < graph.cuts[-1].position else _Identity()
        head_bytes = export_half(head_module, [examples], [input_name], names, opset=opset)
        tail_bytes = export_half(tail_module, list(crossing), names, [LOGITS_NAME], opset=opset)
        options = OrtOptions(intra_op_threads=1)
        head_ort, tail_ort = OrtHalf(head_bytes, options), OrtHalf(tail_bytes, options)
        errors = {"head": (0.0, 0.0), "tail": (0.0, 0.0)}
        with torch.no_grad():
            for batch in CHECK_BATCHES:
                x = examples[:batch].contiguous()
                ref_crossing = _as_tuple(head(x))
                # NOTE: a tail may start with an in-place op (ReLU(inplace=True)): it gets its own copy.
                ref_logits = _as_tuple(tail(*(t.clone() for t in ref_crossing)))
                for half, measured in (
                    ("head", _max_error(head_ort, ref_crossing, [x])),
                    ("tail", _max_error(tail_ort, ref_logits, ref_crossing)),
                ):
                    errors[half] = (max(errors[half][0], measured[0]), max(errors[half][1], measured[1]))
    finally:
        graph.model.train(was_training)
    for half, (error, scale) in errors.items():
        if not error <= tolerance * max(1.0, scale):
            raise ExportError(
                f"the ONNX {half} of {model} at {resolved.name!r} differs from torch by {error:.3g} "
                f"(tolerance {tolerance:g} x max(1, {scale:.3g}))"
            )
    tensors = cut_tensors(resolved)
    image = OnnxTensor(input_name, "float32", (BATCH_DIM, *graph.input_shape[1:]))
    num_classes = int(logits.shape[-1])
    out = OnnxTensor(LOGITS_NAME, _dtype_name(logits.dtype), (BATCH_DIM, num_classes))
    manifest = Manifest(
        model=model,
        weights=weights,
        cut=resolved.name,
        input_shape=tuple(graph.input_shape),
        num_classes=num_classes,
        head=HalfSpec(HEAD_FILE, _digest(head_bytes), (image,), tensors, *errors["head"]),
        tail=HalfSpec(TAIL_FILE, _digest(tail_bytes), tensors, (out,), *errors["tail"]),
        preprocessing=preprocessing,
        labels=tuple(labels),
        cut_values=tuple(value.to_json() for value in resolved.values),
        opset=opset,
        tolerance=tolerance,
    )
    return ExportedSplit(manifest, head_bytes, tail_bytes)


def _digest(data: bytes) -> str:
    import hashlib

    return f"sha256:{hashlib.sha256(data).hexdigest()}"
