"""Run an ONNX half where the services hold torch tensors; find, verify or make the ONNX file of a cut.

A service with ``engine = "onnxruntime"`` (or ``"openvino"``: the same files, compiled by OpenVINO) uses the
export in ``onnx_dir`` when there is one for the cut (``onnx_dir/manifest.json`` for that cut, or
``onnx_dir/<cut>/manifest.json``, as `splitinfer export` writes them), verified against the model, its
weights digest and the cut's tensors; otherwise it exports the half itself, in memory, checked against
torch like `splitinfer export` does.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import torch

from shared.engines import EngineOptions, OnnxHalf, open_half
from shared.models import LoadedModel
from shared.onnx_export import cut_tensors, export_split
from shared.onnx_manifest import MANIFEST_FILE, Manifest
from shared.ov_engine import OvOptions
from shared.splitting import Cut, ModelGraph
from shared.values import ValueSpec

__all__ = ["OrtTorchHalf", "find_export", "ort_half_for", "verify_exports"]

logger = logging.getLogger(__name__)


class OrtTorchHalf:
    """An ONNX half (ONNX Runtime or OpenVINO) called like a torch half: tensors in, a tuple of tensors (or
    one tensor) out."""

    def __init__(self, half: OnnxHalf, *, single_output: bool, values: tuple[ValueSpec, ...] = ()) -> None:
        self.half = half
        self.single_output = single_output
        self.values = values
        """The cut's non-tensor values (``bs = x.size(0)``): a head appends them, computed from its batch."""

    def __call__(self, *inputs: Any) -> Any:
        # NOTE: a tail is also given the cut's values; its ONNX graph computes them from the batch axis itself.
        arrays = [x.detach().cpu().contiguous().numpy() for x in inputs if isinstance(x, torch.Tensor)]
        outputs = tuple(torch.from_numpy(o) for o in self.half(*arrays))
        if self.single_output:
            return outputs[0]
        batch = int(inputs[0].shape[0])
        return outputs + tuple(value.at(batch) for value in self.values)


def find_export(onnx_dir: Path, cut: str) -> Path | None:
    """The folder in ``onnx_dir`` holding the export of ``cut``, if any."""
    for directory in (onnx_dir, onnx_dir / cut):
        path = directory / MANIFEST_FILE
        if path.is_file() and Manifest.read(directory).cut == cut:
            return directory
    return None


def ort_half_for(
    loaded: LoadedModel,
    graph: ModelGraph,
    cut: Cut,
    half: Literal["head", "tail"],
    *,
    onnx_dir: Path | None,
    options: EngineOptions,
) -> OrtTorchHalf:
    """The ONNX Runtime session (or OpenVINO compiled model) for one half of ``cut``: from a verified
    export, or exported now."""
    engine = f"OpenVINO ({options.precision})" if isinstance(options, OvOptions) else "ONNX Runtime"
    directory = find_export(onnx_dir, cut.name) if onnx_dir is not None else None
    if directory is not None:
        manifest = Manifest.read(directory)
        manifest.verify(
            directory,
            model=loaded.name,
            weights=loaded.digest,
            cut=cut.name,
            cut_tensors=cut_tensors(cut),
            halves=(half,),
        )
        spec = manifest.head if half == "head" else manifest.tail
        session = open_half(directory / spec.file, options)
        logger.info("%s of %s at %s: %s on %s", half, loaded.name, cut.name, engine, directory / spec.file)
    else:
        exported = export_split(
            graph,
            cut,
            model=loaded.name,
            weights=loaded.digest,
            preprocessing=loaded.preprocessor.to_json(),
        )
        session = open_half(exported.head if half == "head" else exported.tail, options)
        logger.info("%s of %s at %s: exported to ONNX in memory, on %s", half, loaded.name, cut.name, engine)
    return OrtTorchHalf(session, single_output=half == "tail", values=cut.values if half == "head" else ())


def verify_exports(loaded: LoadedModel, graph: ModelGraph, onnx_dir: Path, *, half: Literal["head", "tail"]) -> int:
    """Verify every export in ``onnx_dir`` (itself or its sub-folders) now, at startup; returns how many."""
    if not onnx_dir.is_dir():
        raise ValueError(f"onnx_dir {str(onnx_dir)!r} is not a folder")
    folders = [onnx_dir, *sorted(p for p in onnx_dir.iterdir() if p.is_dir())]
    count = 0
    for directory in folders:
        if not (directory / MANIFEST_FILE).is_file():
            continue
        manifest = Manifest.read(directory)
        manifest.verify(
            directory,
            model=loaded.name,
            weights=loaded.digest,
            cut_tensors=cut_tensors(graph.cut(manifest.cut)),
            halves=(half,),
        )
        count += 1
    if not count:
        raise ValueError(f"onnx_dir {str(onnx_dir)!r} holds no manifest.json: write one with `splitinfer export`")
    return count
