"""The wire format: a safetensors container with a self-describing, validated header.

Layout (safetensors, https://huggingface.co/docs/safetensors): an 8-byte little-endian header length
``N``, ``N`` bytes of JSON, then the raw tensor bytes. ``__metadata__`` (a string-to-string map)
carries:

==============  ==========================================================================
key             value
==============  ==========================================================================
``format``      ``splitinfer``
``version``     protocol version, ``1``
``kind``        ``activations`` (edge -> cloud), ``image`` (edge -> cloud, cut ``input``)
                or ``logits`` (cloud -> edge)
``model``       model name (``resnet18`` or ``package.module:factory``)
``weights``     weights digest, ``sha256:<hex>``
``cut``         cut name (``layer3``, ``input``...)
``codec``       codec name (``fp16``, ``int8+zstd``, ``int4+ans``...; see :mod:`shared.codecs`)
``layout``      component layout version of the codec, ``1``; sent (and required) with the codecs
                added after the first release (``intB``, ``intB-topP``, ``budgetN``, ``+ans``)
``tensors``     JSON list of the *logical* tensors: ``{"name", "dtype", "shape"}`` each,
                in the order the tail takes them, with their original dtype and shape
``values``      (optional) JSON list of the non-tensor values alive across the cut, which
                the tail takes after the tensors: ``{"name", "kind", "items"}`` each, kind
                ``int``, ``tuple``, ``list`` or ``size`` (``torch.Size``), items a list of
                ints. The receiver checks each against what the cut predicts for the batch
                size the tensors carry, so a value can never steer the tail elsewhere.
==============  ==========================================================================

Each logical tensor ``T`` is stored as the components its codec defines: ``T`` itself, plus
``T.scale`` and ``T.zero_point`` for the quantized codecs (``T`` bit-packed for ``int2``-``int6``).
With ``+zstd`` each component is instead stored as a 1-D ``U8`` tensor holding one zstd frame (with
its content size) of the component's raw little-endian bytes in C order; its dtype and shape follow
from the logical tensor and the codec. With ``+ans``, ``T`` is a 1-D ``U8`` rANS stream and
``T.counts`` a 1-D ``I32`` symbol-count table (see :mod:`shared.entropy`); both lengths are bounded
before anything is decoded.

Nothing received is ever unpickled. :func:`decode_payload` checks sizes, header, dtypes, shapes,
byte counts and declared decompressed sizes against what the receiver expects *before* it
allocates, then checks that floating-point values are finite.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard, get_args

import safetensors.torch
import torch
import zstandard
from safetensors import SafetensorError

from shared.codecs import (
    ACTIVATION_CODECS,
    IMAGE_CODECS,
    LAYOUT_VERSION,
    ComponentSpec,
    TensorCodec,
    is_layout_versioned,
    parse_codec_name,
)
from shared.errors import (
    InvalidTensor,
    MalformedPayload,
    ModelMismatch,
    PayloadTooLarge,
    SplitInferError,
    UnsupportedMediaType,
)
from shared.safetensors_io import save_arrays
from shared.tensor_checks import all_finite
from shared.values import ValueKind, ValueSpec, WireValue

__all__ = [
    "BATCH",
    "MEDIA_TYPE",
    "PROTOCOL_VERSION",
    "MAX_VALUES",
    "MAX_VALUE_ITEMS",
    "ExpectedTensor",
    "Payload",
    "PerItem",
    "WireValue",
    "PayloadKind",
    "WireHeader",
    "WireLimits",
    "declared_tensors",
    "decode_payload",
    "decode_read_payload",
    "encode_payload",
    "read_header",
    "stored_view",
]

MEDIA_TYPE = "application/vnd.splitinfer+safetensors"
PROTOCOL_VERSION = "1"
FORMAT = "splitinfer"
BATCH = "B"
"""Marks the batch dimension in an :class:`ExpectedTensor` shape."""
MAX_VALUES = 32
"""Most non-tensor values in one payload."""
MAX_VALUE_ITEMS = 16
"""Most integers in one non-tensor value."""
_VALUE_KINDS = get_args(ValueKind)


@dataclass(frozen=True)
class PerItem:
    """A dimension of ``rows`` per batch item (a batch-first dimension that is not the batch itself,
    such as Swin's windows: ``64 * B``)."""

    rows: int

    def __str__(self) -> str:
        return f"{self.rows}*B"


PayloadKind = Literal["activations", "image", "logits"]
_ZSTD_LEVEL = 3

_DTYPES: dict[str, torch.dtype] = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I32": torch.int32,
    "I64": torch.int64,
    "BOOL": torch.bool,
}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}
_NAMES = {str(dtype).removeprefix("torch."): dtype for dtype in _DTYPES.values()}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class WireLimits:
    """Bounds on what a receiver accepts."""

    max_batch: int = 32
    max_payload_bytes: int = 4 * 1024 * 1024 * 32
    """Whole payload, as received."""
    max_decoded_bytes: int = 16 * 1024 * 1024 * 32
    """Sum of the raw (decompressed) component sizes."""
    max_header_bytes: int = 64 * 1024

    @classmethod
    def for_batch(cls, max_batch: int, mib_per_item: int = 4) -> WireLimits:
        return cls(
            max_batch=max_batch,
            max_payload_bytes=mib_per_item * 1024 * 1024 * max_batch,
            max_decoded_bytes=4 * mib_per_item * 1024 * 1024 * max_batch,
        )


@dataclass(frozen=True)
class ExpectedTensor:
    """What the receiver expects of one logical tensor. ``BATCH`` marks the batch dimension,
    ``None`` a free dimension (bounded by the size limits)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int | str | PerItem | None, ...]

    def describe(self) -> str:
        dims = ", ".join("*" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {_dtype_name(self.dtype)}[{dims}]"


@dataclass(frozen=True)
class Payload:
    """A decoded payload: its header fields and logical tensors (in header order)."""

    kind: PayloadKind
    model: str
    weights: str
    cut: str
    codec: str
    tensors: tuple[torch.Tensor, ...]
    names: tuple[str, ...]
    values: tuple[WireValue, ...] = ()
    """Non-tensor values, as checked against the expected ones (the tail takes them after the tensors)."""
    batch: int | None = None
    """Items in the payload, from the batch dimensions of its tensors."""

    @property
    def batch_size(self) -> int:
        if self.batch is not None:
            return self.batch
        return int(self.tensors[0].shape[0]) if self.tensors and self.tensors[0].dim() else 0

    @property
    def arguments(self) -> tuple[torch.Tensor | WireValue, ...]:
        """What the tail takes: the tensors, then the values."""
        return (*self.tensors, *self.values)


def encode_payload(
    tensors: Mapping[str, torch.Tensor],
    *,
    kind: PayloadKind,
    model: str,
    weights: str,
    cut: str,
    codec: str,
    values: Mapping[str, WireValue] | None = None,
) -> bytes:
    """Encode named logical tensors (in the order the receiver takes them), and the non-tensor
    ``values`` that follow them, into wire bytes."""
    base, stage = parse_codec_name(codec, IMAGE_CODECS if kind == "image" else ACTIVATION_CODECS)
    use_zstd = stage == "zstd"
    tensor_codec = TensorCodec(base if kind != "image" else "fp32", ans=stage == "ans")
    stored: dict[str, torch.Tensor] = {}
    described: list[dict[str, Any]] = []
    compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL, write_content_size=True) if use_zstd else None
    for name, tensor in tensors.items():
        tensor = tensor.detach().cpu()
        if tensor.dtype not in _CODES:
            raise UnsupportedMediaType(f"tensor {name!r} has dtype {tensor.dtype}, which the wire cannot carry")
        described.append({"name": name, "dtype": _dtype_name(tensor.dtype), "shape": list(tensor.shape)})
        for suffix, part in tensor_codec.encode(tensor).items():
            part = part.contiguous()
            if compressor is not None:
                raw = part.reshape(-1).view(torch.uint8).numpy().tobytes() if part.numel() else b""
                part = torch.frombuffer(bytearray(compressor.compress(raw)), dtype=torch.uint8)
            stored[name + suffix] = part
    metadata = {
        "format": FORMAT,
        "version": PROTOCOL_VERSION,
        "kind": kind,
        "model": model,
        "weights": weights,
        "cut": cut,
        "codec": codec,
        "tensors": json.dumps(described, separators=(",", ":")),
        **({"layout": LAYOUT_VERSION} if kind != "image" and (is_layout_versioned(base) or stage == "ans") else {}),
    }
    if values:
        metadata["values"] = json.dumps([_describe_value(n, v) for n, v in values.items()], separators=(",", ":"))
    arrays = {name: _as_array(part) for name, part in stored.items()}
    return save_arrays(arrays, metadata, bf16=[name for name, part in stored.items() if part.dtype == torch.bfloat16])


def _as_array(tensor: torch.Tensor) -> Any:
    """A CPU tensor's data as a numpy array (bfloat16 as its 16-bit patterns: numpy has no bfloat16)."""
    return (tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor).numpy()


def _describe_value(name: str, value: WireValue) -> dict[str, Any]:
    if isinstance(value, torch.Size):
        kind, items = "size", [int(v) for v in value]
    elif isinstance(value, int) and not isinstance(value, bool):
        kind, items = "int", [value]
    elif isinstance(value, tuple | list) and _is_int_list(list(value)):
        kind, items = ("tuple" if isinstance(value, tuple) else "list"), list(value)
    else:
        raise UnsupportedMediaType(f"value {name!r} is a {type(value).__name__}, which the wire cannot carry")
    return {"name": name, "kind": kind, "items": items}


def _check_values(raw: str | None, expected: Sequence[ValueSpec], batch: int | None) -> tuple[WireValue, ...]:
    """Parse the ``values`` metadata and check it against what the cut predicts for ``batch``."""
    try:
        items = json.loads(raw) if raw is not None else []
    except json.JSONDecodeError as exc:
        raise MalformedPayload(f"metadata 'values' is not JSON: {exc}") from exc
    if not isinstance(items, list) or len(items) > MAX_VALUES:
        raise MalformedPayload(f"metadata 'values' must be a list of at most {MAX_VALUES} values")
    got = [item.get("name") if isinstance(item, dict) else None for item in items]
    want = [e.name for e in expected]
    if got != want:
        raise InvalidTensor(f"payload carries values {got}; this cut expects {want}")
    if batch is None:
        if expected:
            raise InvalidTensor("values need a batch dimension to be checked against, and no tensor has one")
        return ()
    checked: list[WireValue] = []
    for item, exp in zip(items, expected, strict=True):
        kind, ints = item.get("kind"), item.get("items")
        if kind not in _VALUE_KINDS or not _is_int_list(ints) or len(ints) > MAX_VALUE_ITEMS:
            raise MalformedPayload(
                f"value {exp.name!r} needs a kind in {_VALUE_KINDS} and at most {MAX_VALUE_ITEMS} integer items"
            )
        if kind != exp.kind or ints != exp.items_at(batch):
            raise InvalidTensor(
                f"value {exp.name!r} is {kind} {ints}; at batch {batch} this cut expects {exp.kind} "
                f"{exp.items_at(batch)}"
            )
        checked.append(exp.at(batch))
    return tuple(checked)


WireHeader = tuple[dict[str, str], dict[str, dict[str, Any]]]
"""A payload's parsed and bound-checked header: ``(metadata, entries)``."""


def read_header(data: bytes, limits: WireLimits) -> WireHeader:
    """Parse and bound-check the safetensors header: ``(metadata, entries)``."""
    if len(data) > limits.max_payload_bytes:
        raise PayloadTooLarge(f"payload is {len(data)} bytes; the limit is {limits.max_payload_bytes}")
    if len(data) < 8:
        raise MalformedPayload(f"payload is {len(data)} bytes; a safetensors container needs at least 8")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > limits.max_header_bytes:
        raise PayloadTooLarge(f"header declares {header_len} bytes; the limit is {limits.max_header_bytes}")
    if 8 + header_len > len(data):
        raise MalformedPayload(f"header declares {header_len} bytes but only {len(data) - 8} follow")
    header = _bounded_json(data[8 : 8 + header_len], "header")
    if not isinstance(header, dict):
        raise MalformedPayload("header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise MalformedPayload("header has no __metadata__ string map")
    body = len(data) - 8 - header_len
    entries: dict[str, dict[str, Any]] = {}
    for name, entry in header.items():
        entries[name] = _check_entry(name, entry, body, 8 + header_len)
    return metadata, entries


def stored_view(data: bytes, header: WireHeader, name: str, dtype: torch.dtype) -> memoryview:
    """The stored bytes of the 1-D ``dtype`` tensor ``name`` of ``data`` (its header read: ``header``), as a view
    of ``data``: nothing is copied (what only needs to be read, such as images' headers to price them, is read
    in place; decoding copies the tensors). :class:`MalformedPayload` when there is no such tensor."""
    entry = header[1].get(name)
    if entry is None or entry["dtype"] != dtype or len(entry["shape"]) != 1:
        raise MalformedPayload(f"payload has no 1-D {_dtype_name(dtype)} tensor {name!r}")
    start, end = entry["span"]
    return memoryview(data)[start:end]


_MAX_JSON_DEPTH = 8
_MAX_INT_DIGITS = 20
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_SAME_BRACKETS = bytes.maketrans(b"{}", b"[]")  # NOTE: mismatched kinds are json.loads' to refuse


def _json_depth(text: bytes, limit: int) -> int:
    """The deepest nesting of ``[``/``{`` outside strings, counted up to ``limit + 1`` (without recursing:
    a header 30,000 deep is fine). Each pass removes the innermost pairs, one level, in C."""
    brackets = _JSON_STRING.sub(b"", text).translate(None, _NOT_BRACKETS).translate(_SAME_BRACKETS)
    depth = 0
    while brackets and depth <= limit:
        inner_removed = brackets.replace(b"[]", b"")
        if len(inner_removed) == len(brackets):
            break  # NOTE: unbalanced; json.loads refuses it
        brackets, depth = inner_removed, depth + 1
    return depth


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise MalformedPayload(f"an integer of {len(text)} digits; at most {_MAX_INT_DIGITS} are accepted")
    return int(text)


def _no_constant(name: str) -> Any:
    raise MalformedPayload(f"{name} is not valid JSON")


def _bounded_json(text: bytes, what: str) -> Any:
    """Parse a peer's JSON with its nesting and its integers bounded before anything is built."""
    if _json_depth(text, _MAX_JSON_DEPTH) > _MAX_JSON_DEPTH:
        raise MalformedPayload(f"{what} is nested deeper than {_MAX_JSON_DEPTH} levels, the most accepted")
    try:
        return json.loads(text, parse_int=_bounded_int, parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError, RecursionError) as exc:
        raise MalformedPayload(f"{what} is not valid JSON: {str(exc)[:200]}") from exc


def _check_entry(name: str, entry: Any, body: int, start: int) -> dict[str, Any]:
    """A header entry checked against the ``body`` bytes after the header, which starts at ``start``."""
    if not isinstance(entry, dict):
        raise MalformedPayload(f"header entry {name!r} is not an object")
    code, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if code not in _DTYPES:
        raise UnsupportedMediaType(f"tensor {name!r} has dtype {code!r}; accepted: {', '.join(_DTYPES)}")
    if not _is_int_list(shape) or any(d < 0 for d in shape):
        raise MalformedPayload(f"tensor {name!r} has shape {shape!r}; expected a list of non-negative ints")
    if not _is_int_list(offsets) or len(offsets) != 2 or not 0 <= offsets[0] <= offsets[1] <= body:
        raise MalformedPayload(f"tensor {name!r} has data_offsets {offsets!r} outside the {body}-byte body")
    numel = 1
    for d in shape:
        numel *= d
    nbytes = numel * _DTYPES[code].itemsize
    if nbytes != offsets[1] - offsets[0]:
        raise InvalidTensor(
            f"tensor {name!r}: {code}{shape} needs {nbytes} bytes but {offsets[1] - offsets[0]} are stored"
        )
    span = (start + offsets[0], start + offsets[1])
    return {"dtype": _DTYPES[code], "shape": tuple(shape), "nbytes": nbytes, "span": span}


def _is_int_list(value: Any) -> TypeGuard[list[int]]:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _parse_tensor_list(raw: str) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    items = _bounded_json(raw.encode("utf-8", "surrogatepass"), "metadata 'tensors'")
    if not isinstance(items, list):
        raise MalformedPayload("metadata 'tensors' is not a list")
    parsed = []
    for item in items:
        if not isinstance(item, dict) or not all(isinstance(item.get(key), str) for key in ("name", "dtype")):
            raise MalformedPayload("metadata 'tensors' entries need a name, dtype and shape")
        dtype = _NAMES.get(item["dtype"])
        if dtype is None:
            raise UnsupportedMediaType(f"tensor {item['name']!r} has unknown dtype {item.get('dtype')!r}")
        shape = item.get("shape")
        if not _is_int_list(shape) or any(d < 0 for d in shape):
            raise MalformedPayload(f"tensor {item['name']!r} has shape {shape!r}")
        parsed.append((item["name"], dtype, tuple(shape)))
    return parsed


def declared_tensors(metadata: Mapping[str, str]) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """The logical tensors (name, dtype, shape) a payload's header ``metadata`` declares, unchecked against
    what the receiver expects (raises :class:`MalformedPayload` or :class:`UnsupportedMediaType` for a list it
    cannot read)."""
    return _parse_tensor_list(metadata.get("tensors", "[]"))


def _check_expected(
    declared: list[tuple[str, torch.dtype, tuple[int, ...]]],
    expected: Sequence[ExpectedTensor],
    limits: WireLimits,
) -> int | None:
    got = [name for name, _, _ in declared]
    want = [e.name for e in expected]
    if got != want:
        raise InvalidTensor(f"payload carries tensors {got}; this cut expects {want}")
    batch: int | None = None
    for (name, dtype, shape), exp in zip(declared, expected, strict=True):
        if dtype != exp.dtype:
            raise InvalidTensor(f"tensor {name!r} is {_dtype_name(dtype)}; expected {exp.describe()}")
        if len(shape) != len(exp.shape):
            raise InvalidTensor(f"tensor {name!r} has shape {list(shape)}; expected {exp.describe()}")
        for size, want_size in zip(shape, exp.shape, strict=True):
            if want_size == BATCH or isinstance(want_size, PerItem):
                rows = want_size.rows if isinstance(want_size, PerItem) else 1
                if rows < 1 or size % rows:
                    raise InvalidTensor(f"tensor {name!r} has shape {list(shape)}; expected {exp.describe()}")
                if batch is None:
                    batch = size // rows
                if size != batch * rows:
                    raise InvalidTensor(f"tensor {name!r} has batch {size // rows}; other tensors have batch {batch}")
            elif want_size is not None and size != want_size:
                raise InvalidTensor(f"tensor {name!r} has shape {list(shape)}; expected {exp.describe()}")
    if batch is not None and batch < 1:
        raise InvalidTensor("batch size 0: a payload carries at least one item")
    if batch is not None and batch > limits.max_batch:
        raise PayloadTooLarge(f"batch size {batch} exceeds the limit of {limits.max_batch}")
    return batch


def decode_payload(
    data: bytes,
    *,
    kind: PayloadKind,
    model: str,
    weights: str,
    expected: Mapping[str, Sequence[ExpectedTensor | ValueSpec]] | Sequence[ExpectedTensor | ValueSpec],
    limits: WireLimits = WireLimits(),
) -> Payload:
    """Validate and decode untrusted wire bytes.

    ``expected`` is the list of tensors (and non-tensor values) the receiver expects, or a map from cut
    name to that list (the cloud, which accepts every cut of its model). Raises only
    :class:`SplitInferError` subclasses.
    """
    return decode_read_payload(data, None, kind=kind, model=model, weights=weights, expected=expected, limits=limits)


def decode_read_payload(
    data: bytes,
    header: WireHeader | None,
    *,
    kind: PayloadKind,
    model: str,
    weights: str,
    expected: Mapping[str, Sequence[ExpectedTensor | ValueSpec]] | Sequence[ExpectedTensor | ValueSpec],
    limits: WireLimits = WireLimits(),
) -> Payload:
    """:func:`decode_payload` when its header was read already (``header = read_header(data, limits)``;
    ``None``: read it here)."""
    try:
        return _decode(data, kind, model, weights, expected, limits, header)
    except SplitInferError:
        raise
    except (ValueError, RuntimeError, TypeError, KeyError, zstandard.ZstdError) as exc:
        # NOTE: a last line of defence; the checks above should have refused the payload already.
        raise MalformedPayload(f"payload could not be decoded: {exc}") from exc


def _decode(
    data: bytes,
    kind: PayloadKind,
    model: str,
    weights: str,
    expected: Mapping[str, Sequence[ExpectedTensor | ValueSpec]] | Sequence[ExpectedTensor | ValueSpec],
    limits: WireLimits,
    header: WireHeader | None,
) -> Payload:
    metadata, entries = header if header is not None else read_header(data, limits)
    if metadata.get("format") != FORMAT:
        raise UnsupportedMediaType(f"payload format is {metadata.get('format')!r}; expected {FORMAT!r}")
    if metadata.get("version") != PROTOCOL_VERSION:
        raise UnsupportedMediaType(
            f"protocol version {metadata.get('version')!r} is not supported; this side speaks {PROTOCOL_VERSION!r}"
        )
    if metadata.get("kind") != kind:
        raise MalformedPayload(f"payload kind is {metadata.get('kind')!r}; expected {kind!r}")
    if metadata.get("model") != model:
        raise ModelMismatch(f"payload is for model {metadata.get('model')!r}; this side serves {model!r}")
    if metadata.get("weights") != weights:
        raise ModelMismatch(
            f"payload is for weights {metadata.get('weights')!r}; this side has {model!r} with weights {weights!r}"
        )
    cut = metadata.get("cut", "")
    codec = metadata.get("codec", "")
    if isinstance(expected, Mapping):
        if cut not in expected:
            raise ModelMismatch(f"cut {cut!r} is not a valid cut of {model!r}")
        expected_all = expected[cut]
    else:
        expected_all = expected
    expected_tensors = [e for e in expected_all if isinstance(e, ExpectedTensor)]
    expected_values = [e for e in expected_all if isinstance(e, ValueSpec)]
    base, stage = parse_codec_name(codec, IMAGE_CODECS if kind == "image" else ACTIVATION_CODECS)
    use_zstd = stage == "zstd"
    versioned = kind != "image" and (is_layout_versioned(base) or stage == "ans")
    if versioned and metadata.get("layout") != LAYOUT_VERSION:
        raise UnsupportedMediaType(
            f"codec {codec!r} with layout {metadata.get('layout')!r} is not supported; this side reads layout "
            f"{LAYOUT_VERSION!r}"
        )
    declared = _parse_tensor_list(metadata.get("tensors", "[]"))
    batch = _check_expected(declared, expected_tensors, limits)
    values = _check_values(metadata.get("values"), expected_values, batch)

    tensor_codec = TensorCodec(base if kind != "image" else "fp32", ans=stage == "ans")
    plan: list[tuple[str, dict[str, tuple[torch.dtype, tuple[int, ...]]]]] = []
    decoded_bytes = 0
    wanted: set[str] = set()
    for name, dtype, shape in declared:
        decoded_bytes += _numel(shape) * dtype.itemsize if versioned else 0
        declared_parts = tensor_codec.components(dtype, shape)
        parts: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
        for suffix, spec in declared_parts.items():
            entry = entries.get(name + suffix)
            if entry is None:
                raise MalformedPayload(f"component {name + suffix!r} of codec {codec!r} is missing")
            wanted.add(name + suffix)
            part_dtype, part_shape = _resolve(
                name + suffix, spec, entry, tensor_codec.max_component_bytes(suffix, shape)
            )
            parts[suffix] = (part_dtype, part_shape)
            raw_bytes = _numel(part_shape) * part_dtype.itemsize
            decoded_bytes += raw_bytes
            if use_zstd:
                if entry["dtype"] != torch.uint8 or len(entry["shape"]) != 1:
                    raise MalformedPayload(f"compressed component {name + suffix!r} must be 1-D U8")
            elif entry["dtype"] != part_dtype or entry["shape"] != part_shape:
                raise InvalidTensor(
                    f"component {name + suffix!r} is {_dtype_name(entry['dtype'])}{list(entry['shape'])}; "
                    f"codec {codec!r} needs {_dtype_name(part_dtype)}{list(part_shape)}"
                )
        plan.append((name, parts))
    unexpected = set(entries) - wanted
    if unexpected:
        raise MalformedPayload(f"payload carries unexpected tensors: {sorted(unexpected)}")
    if decoded_bytes > limits.max_decoded_bytes:
        raise PayloadTooLarge(f"payload decodes to {decoded_bytes} bytes; the limit is {limits.max_decoded_bytes}")

    try:
        stored = safetensors.torch.load(data)
    except SafetensorError as exc:
        raise MalformedPayload(f"safetensors container is invalid: {exc}") from exc
    decompressor = zstandard.ZstdDecompressor() if use_zstd else None
    tensors: list[torch.Tensor] = []
    for (name, parts), (_, dtype, _shape) in zip(plan, declared, strict=True):
        components: dict[str, torch.Tensor] = {}
        for suffix, (part_dtype, part_shape) in parts.items():
            part = stored[name + suffix]
            if decompressor is not None:
                part = _decompress(decompressor, name + suffix, part, part_dtype, part_shape)
            components[suffix] = part
        tensor = tensor_codec.decode(components, dtype, _shape)
        if tensor.dtype.is_floating_point and not all_finite(tensor):
            raise InvalidTensor(f"tensor {name!r} contains NaN or infinite values")
        tensors.append(tensor)
    return Payload(
        kind=kind,
        model=model,
        weights=weights,
        cut=cut,
        codec=codec,
        tensors=tuple(tensors),
        names=tuple(name for name, _, _ in declared),
        values=values,
        batch=batch,
    )


def _resolve(
    name: str, spec: ComponentSpec, entry: dict[str, Any], max_bytes: int
) -> tuple[torch.dtype, tuple[int, ...]]:
    """A component's dtype and shape; a variable length (``None``) is taken from the entry once bounded."""
    dtype, shape = spec
    if all(d is not None for d in shape):
        return dtype, tuple(d for d in shape if d is not None)
    if entry["dtype"] != dtype or len(entry["shape"]) != len(shape):
        raise InvalidTensor(
            f"component {name!r} is {_dtype_name(entry['dtype'])}{list(entry['shape'])}; "
            f"its codec needs a {len(shape)}-D {_dtype_name(dtype)} tensor"
        )
    if entry["nbytes"] > max_bytes:
        raise PayloadTooLarge(f"component {name!r} holds {entry['nbytes']} bytes; at most {max_bytes} are accepted")
    return dtype, tuple(entry["shape"])


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for d in shape:
        count *= d
    return count


def _decompress(
    decompressor: zstandard.ZstdDecompressor,
    name: str,
    part: torch.Tensor,
    dtype: torch.dtype,
    shape: tuple[int, ...],
) -> torch.Tensor:
    expected = _numel(shape) * dtype.itemsize
    frame = part.numpy().tobytes()
    try:
        declared = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as exc:
        raise MalformedPayload(f"component {name!r} is not a zstd frame: {exc}") from exc
    if declared != expected:
        raise InvalidTensor(f"component {name!r} declares {declared} decompressed bytes; expected {expected}")
    try:
        raw = decompressor.decompress(frame, max_output_size=expected)
    except zstandard.ZstdError as exc:
        raise MalformedPayload(f"component {name!r} cannot be decompressed: {exc}") from exc
    if len(raw) != expected:
        raise InvalidTensor(f"component {name!r} decompressed to {len(raw)} bytes; expected {expected}")
    if expected == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=dtype).reshape(shape)
