"""The manifest written next to an exported head and tail: what they are, so a service can check them.

Torch-free on purpose (JSON, hashlib and dataclasses only): the torch-free edge (:mod:`edge_lite`) reads it.

Layout of an export directory (``splitinfer export MODEL --cut C --out DIR``)::

    DIR/manifest.json   this manifest
    DIR/head.onnx       the head: ``input`` (float32, N x 3 x H x W) -> the tensors alive across the cut
    DIR/tail.onnx       the tail: the tensors alive across the cut -> ``logits`` (float32, N x classes)

Tensor names are the FX names the wire format uses, so a head's outputs are a payload's tensors as they are.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import ModelMismatch

__all__ = [
    "BATCH_DIM",
    "HEAD_FILE",
    "INPUT_NAME",
    "LOGITS_NAME",
    "MANIFEST_FILE",
    "MANIFEST_FORMAT",
    "TAIL_FILE",
    "HalfSpec",
    "Manifest",
    "OnnxTensor",
    "file_digest",
]

MANIFEST_FORMAT = "splitinfer-onnx/1"
MANIFEST_FILE = "manifest.json"
HEAD_FILE = "head.onnx"
TAIL_FILE = "tail.onnx"
INPUT_NAME = "input"
LOGITS_NAME = "logits"
BATCH_DIM = "batch"
_MAX_MANIFEST_BYTES = 4 * 1024 * 1024


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


@dataclass(frozen=True)
class OnnxTensor:
    """One named input or output of a half; ``shape[0]`` is the dynamic batch axis (``"batch"``)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, raw: Any) -> OnnxTensor:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not isinstance(raw.get("dtype"), str):
            raise ValueError(f"manifest tensor entry {raw!r} needs a name, a dtype and a shape")
        shape = raw.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int | str) for d in shape):
            raise ValueError(f"manifest tensor {raw['name']!r} has shape {shape!r}")
        return cls(raw["name"], raw["dtype"], tuple(shape))


@dataclass(frozen=True)
class HalfSpec:
    """One exported half: its file, the file's digest, its named inputs and outputs, and its export error."""

    file: str
    sha256: str
    inputs: tuple[OnnxTensor, ...]
    outputs: tuple[OnnxTensor, ...]
    max_abs_error: float
    """Largest ``|onnxruntime - torch|`` over the checks run at export (batch sizes 1 and 2)."""
    max_abs_value: float = 0.0
    """Largest ``|torch|`` over the same outputs: the scale the error is judged against."""

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "sha256": self.sha256,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "max_abs_error": self.max_abs_error,
            "max_abs_value": self.max_abs_value,
        }

    @classmethod
    def from_json(cls, raw: Any) -> HalfSpec:
        if not isinstance(raw, dict):
            raise ValueError("manifest half is not an object")
        file, digest = raw.get("file"), raw.get("sha256")
        if not isinstance(file, str) or "/" in file or "\\" in file or file.startswith("."):
            raise ValueError(f"manifest half file {file!r} must be a plain file name in the export directory")
        if not isinstance(digest, str):
            raise ValueError("manifest half has no sha256")
        return cls(
            file=file,
            sha256=digest,
            inputs=tuple(OnnxTensor.from_json(t) for t in raw.get("inputs", [])),
            outputs=tuple(OnnxTensor.from_json(t) for t in raw.get("outputs", [])),
            max_abs_error=float(raw.get("max_abs_error", float("nan"))),
            max_abs_value=float(raw.get("max_abs_value", 0.0)),
        )


@dataclass(frozen=True)
class Manifest:
    """What ``splitinfer export`` wrote, and what a service checks before it runs the files."""

    model: str
    weights: str
    """The weights digest (``sha256:<hex>``, as :func:`shared.models.weights_digest`)."""
    cut: str
    input_shape: tuple[int, ...]
    num_classes: int
    head: HalfSpec
    tail: HalfSpec
    preprocessing: dict[str, Any]
    """``ImagePreprocessor.to_json()``: crop and resize sizes, mean, std (of 0-1 pixels), interpolation."""
    labels: tuple[str, ...] = ()
    cut_values: tuple[dict[str, Any], ...] = ()
    """The cut's non-tensor values (``ValueSpec.to_json()``: ``bs = x.size(0)``...): not in the ONNX files (the
    tail computes them from its batch axis), but a payload carries them, so an edge must send them
    (:meth:`values_at`)."""
    opset: int = 17
    tolerance: float = 1e-4
    """Each half's ``max_abs_error <= tolerance * max(1, max_abs_value)``: absolute for outputs up to 1 in
    magnitude, relative to the largest output beyond (float32 torch itself is ~1e-6 relative from exact)."""

    @property
    def cut_tensors(self) -> tuple[OnnxTensor, ...]:
        """The tensors alive across the cut (the head's outputs, the tail's inputs, the payload's tensors)."""
        return self.head.outputs

    def values_at(self, batch: int) -> list[dict[str, Any]]:
        """The cut's non-tensor values for a batch of ``batch`` items, described as a payload carries them
        (``name``, ``kind``, ``items``): each integer is ``per_item * batch`` plus its value at batch 1 less
        ``per_item``. ``ValueError`` for an entry that is not of that form (a hand-edited manifest)."""
        described = []
        for value in self.cut_values:
            at_one, per_item = value.get("value_at_batch_1"), value.get("per_item")
            ones = at_one if isinstance(at_one, list) else [at_one]
            slopes = per_item if isinstance(per_item, list) else [per_item]
            if len(ones) != len(slopes) or not all(isinstance(v, int) for v in (*ones, *slopes)):
                raise ValueError(f"manifest value {value.get('name')!r} is not a per-item affine integer value")
            items = [slope * batch + one - slope for one, slope in zip(ones, slopes, strict=True)]
            described.append({"name": value.get("name"), "kind": value.get("kind"), "items": items})
        return described

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "model": self.model,
            "weights": self.weights,
            "cut": self.cut,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "opset": self.opset,
            "tolerance": self.tolerance,
            "preprocessing": self.preprocessing,
            "head": self.head.to_json(),
            "tail": self.tail.to_json(),
            "labels": list(self.labels),
            "cut_values": list(self.cut_values),
        }

    def write(self, directory: Path) -> Path:
        path = directory / MANIFEST_FILE
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return path

    @classmethod
    def from_json(cls, raw: Any) -> Manifest:
        if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
            found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
            raise ValueError(f"not a splitinfer ONNX manifest (format {found!r}; expected {MANIFEST_FORMAT!r})")
        try:
            return cls(
                model=str(raw["model"]),
                weights=str(raw["weights"]),
                cut=str(raw["cut"]),
                input_shape=tuple(int(d) for d in raw["input_shape"]),
                num_classes=int(raw["num_classes"]),
                head=HalfSpec.from_json(raw["head"]),
                tail=HalfSpec.from_json(raw["tail"]),
                preprocessing=dict(raw["preprocessing"]),
                labels=tuple(str(label) for label in raw.get("labels", [])),
                cut_values=tuple(dict(v) for v in raw.get("cut_values", [])),
                opset=int(raw.get("opset", 17)),
                tolerance=float(raw.get("tolerance", 1e-4)),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"manifest is missing or mistypes a field: {exc}") from exc

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        """Read ``directory/manifest.json`` (``ValueError`` when it is missing, too large or malformed)."""
        path = directory / MANIFEST_FILE
        if not path.is_file():
            raise ValueError(f"{str(path)!r} does not exist: write it with `splitinfer export MODEL --cut C`")
        if path.stat().st_size > _MAX_MANIFEST_BYTES:
            raise ValueError(f"{str(path)!r} is larger than {_MAX_MANIFEST_BYTES} bytes")
        try:
            raw = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{str(path)!r} is not JSON: {exc}") from exc
        return cls.from_json(raw)

    def verify(
        self,
        directory: Path,
        *,
        model: str | None = None,
        weights: str | None = None,
        cut: str | None = None,
        cut_tensors: tuple[OnnxTensor, ...] | None = None,
        halves: tuple[str, ...] = ("head", "tail"),
    ) -> None:
        """Check the manifest against what the service serves and the files against their digests.

        Raises :class:`ModelMismatch` (a 409 if it ever reached a client; at startup it stops the service).
        """
        checks = (("model", model, self.model), ("weights digest", weights, self.weights), ("cut", cut, self.cut))
        for what, want, got in checks:
            if want is not None and want != got:
                raise ModelMismatch(
                    f"the ONNX export in {str(directory)!r} is for {what} {got!r}; this serves {want!r}"
                )
        if cut_tensors is not None:
            for name, have in (("head outputs", self.head.outputs), ("tail inputs", self.tail.inputs)):
                if _signature(have) != _signature(cut_tensors):
                    raise ModelMismatch(
                        f"the ONNX export's {name} {_describe(have)} do not match the cut's tensors "
                        f"{_describe(cut_tensors)}"
                    )
        for half in halves:
            spec = self.head if half == "head" else self.tail
            path = directory / spec.file
            if not path.is_file():
                raise ModelMismatch(f"the ONNX export lacks {str(path)!r}")
            if file_digest(path) != spec.sha256:
                raise ModelMismatch(f"{str(path)!r} does not match the digest in its manifest")


def _signature(tensors: tuple[OnnxTensor, ...]) -> list[tuple[str, str, tuple[int | str, ...]]]:
    return [(t.name, t.dtype, tuple(BATCH_DIM if i == 0 else d for i, d in enumerate(t.shape))) for t in tensors]


def _describe(tensors: tuple[OnnxTensor, ...]) -> str:
    return ", ".join(f"{t.name}: {t.dtype}{list(t.shape)}" for t in tensors)
