"""Graph-level model splitting: list every valid cut of a model and split it into head and tail.

A *cut* is a position in the model's FX graph (in execution order): the head runs every node before
it, the tail every node after it. The tensors *alive across* the cut are the values the head
computed (or received as input) that the tail still needs; they are what travels from edge to cloud.
A cut is valid when every value alive across it is either a tensor whose first dimension grows with
the batch (``k`` rows per item), or a small shape-derived Python value (an ``int``, a tuple or list of
ints, a ``torch.Size``) whose every entry is an affine function of the batch size (``bs = x.size(0)``,
``B, H, W, C = x.shape``). Such values travel next to the tensors and are checked against what the
trace predicts for the batch received. Parameters and buffers never cross a cut: each half reads them
from the (shared) model itself.

Every cut has a unique name: ``input``, ``output``, the outermost module ending there, or the function
that produced the tensors crossing it. Shape bookkeeping (``getattr``/``getitem`` of a shape, ``dim``,
integer arithmetic, ``torch._assert``) never names a cut: a cut after such a node that carries the same
tensors as a neighbouring cut is dropped (its FX name still resolves, to that neighbour), and one that
does not is named after the producer of its newest tensor (the module whose tuple output was unpacked,
``encoder[:,0]`` for a slice of the ``encoder``'s output). A name already taken by an earlier cut gets
``#2``, ``#3``... in execution order, so the edge and the cloud, which build the same graph, agree on
every name by construction.
"""

from __future__ import annotations

import builtins
import difflib
import hashlib
import json
import operator
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from shared.flops import flop_counter
from shared.tracing import TracedModel, TraceOptions, trace_model
from shared.values import ValueSpec
from shared.wire import MAX_VALUE_ITEMS, MAX_VALUES

__all__ = [
    "DEFAULT_CUT",
    "INPUT_CUT",
    "MAX_VALUES_PER_CUT",
    "MAX_VALUE_ITEMS",
    "OUTPUT_CUT",
    "Cut",
    "ModelGraph",
    "TensorSpec",
    "ValueSpec",
    "list_cuts",
    "split_model",
]

MAX_VALUES_PER_CUT = MAX_VALUES
"""Most non-tensor values a cut may carry."""
_PROBE_BATCHES = (2, 3)
_NOT_CALLED = object()
_MIXED_ROWS = (
    "of one image change when other images share its batch (rows mix across the batch dimension); serving "
    "needs each image's logits to depend on that image alone (the services batch requests together)"
)

INPUT_CUT = "input"
DEFAULT_CUT = "default"
"""Resolves to :meth:`ModelGraph.default_cut` (unless a module of the model is called that)."""
OUTPUT_CUT = "output"
_COMPUTE_OPS = ("call_function", "call_method", "call_module")
_INDEXING = (operator.getitem, builtins.getattr)
_MAX_NAME_CHARS = 120


@dataclass(frozen=True)
class TensorSpec:
    """One tensor alive across a cut, as measured with the trace input (batch size 1)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    per_item: int = 1
    """Rows of the first dimension per batch item (``shape[0]`` at batch size 1)."""

    @property
    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count

    @property
    def bytes_fp32(self) -> int:
        return 4 * self.numel

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": str(self.dtype).removeprefix("torch."),
            "bytes_fp32": self.bytes_fp32,
            "per_item": self.per_item,
        }


@dataclass(frozen=True)
class Cut:
    """A valid place to split a model."""

    index: int
    """Position in :meth:`ModelGraph.cuts` (execution order)."""
    name: str
    """Stable name: ``input``, ``output``, the outermost module ending here, or what produced the tensors
    crossing (a function's FX node, never shape bookkeeping: see the module docstring)."""
    position: int
    """Number of compute nodes the head runs."""
    node: str
    """FX name of the last node the head runs (empty for ``input``)."""
    aliases: tuple[str, ...]
    """Every module that ends exactly here, outermost first."""
    tensors: tuple[TensorSpec, ...]
    head_flops_share: float
    """Share of the model's FLOPs (multiply-adds counted twice) that the head runs."""
    values: tuple[ValueSpec, ...] = ()
    """Non-tensor values that cross with the tensors (the head returns them after the tensors)."""

    @property
    def single_tensor(self) -> bool:
        """One tensor with one row per item (plus, maybe, a few shape integers): the simplest thing to ship."""
        return len(self.tensors) == 1 and self.tensors[0].per_item == 1

    @property
    def bytes_fp32(self) -> int:
        return sum(t.bytes_fp32 for t in self.tensors)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "node": self.node,
            "aliases": list(self.aliases),
            "single_tensor": self.single_tensor,
            "bytes_fp32": self.bytes_fp32,
            "head_flops_share": round(self.head_flops_share, 6),
            "tensors": [t.to_json() for t in self.tensors],
            "values": [v.to_json() for v in self.values],
        }


@dataclass
class _Position:
    alive: list[fx.Node]
    blocking: list[str] = field(default_factory=list)
    reason: str = ""
    """Why the values in ``blocking`` cannot cross (empty: they are not batch-first tensors or shape integers)."""


class _Profiler(fx.Interpreter):
    """Runs the graph once, recording each node's output and FLOPs."""

    def __init__(self, graph_module: fx.GraphModule, counter: FlopCounterMode | None) -> None:
        super().__init__(graph_module)
        self.counter = counter
        self.values: dict[str, Any] = {}
        self.flops: dict[str, int] = {}
        self.rows: dict[str, torch.Tensor] = {}
        """A fingerprint of each tensor's rows along its first dimension (sums of absolute values, float64)."""
        self.storages: dict[str, int] = {}
        """The address of each tensor's storage (two tensors alive at once with the same one share memory)."""
        self.mutated: dict[str, set[int]] = {}
        """For each node that wrote in place into a tensor it was given: the storages it wrote into."""
        self.returned: Any = None
        """What the graph returned."""

    def run_node(self, n: fx.Node) -> Any:
        before = self.counter.get_total_flops() if self.counter is not None else 0
        # NOTE: an in-place write bumps the version counter that a tensor shares with all its views.
        given = [v for v in (self.env.get(i) for i in n.all_input_nodes) if isinstance(v, torch.Tensor)]
        versions = [t._version for t in given]
        result = super().run_node(n)
        written = {_storage(t) for t, v in zip(given, versions, strict=True) if t._version != v}
        written.discard(None)
        if written:
            self.mutated[n.name] = written  # type: ignore[assignment]
        address = _storage(result) if isinstance(result, torch.Tensor) else None
        if address is not None:
            self.storages[n.name] = address
        if self.counter is not None:
            self.flops[n.name] = self.counter.get_total_flops() - before
        self.values[n.name] = _summary(result)
        if isinstance(result, torch.Tensor) and result.dim() and result.numel():
            # NOTE: absolute values, so that rows summing to about zero (after a norm) still compare.
            self.rows[n.name] = result.detach().reshape(result.shape[0], -1).double().abs().sum(1)
        return result


def _same_outputs(a: Any, b: Any) -> bool:
    """Whether two outputs (tensors, or tuples/lists/dicts of them) agree to float32 rounding."""
    # NOTE: leaves only: torch.fx returns its own immutable_dict/immutable_list where forward built a dict/list.
    leaves_a, leaves_b = tree_flatten(a)[0], tree_flatten(b)[0]
    if len(leaves_a) != len(leaves_b):
        return False
    for x, y in zip(leaves_a, leaves_b, strict=True):
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            if x.shape != y.shape or x.dtype != y.dtype:
                return False
            if x.is_floating_point() and not torch.allclose(x, y, rtol=1e-4, atol=1e-5, equal_nan=True):
                return False
            if not x.is_floating_point() and not torch.equal(x, y):
                return False
        elif type(x) is not type(y) or (not isinstance(x, torch.Tensor) and x != y):
            return False
    return True


def _difference(a: Any, b: Any) -> str:
    """The largest difference between two outputs, in words."""
    pairs = zip(tree_flatten(a)[0], tree_flatten(b)[0], strict=False)
    gaps = [
        float((x.double() - y.double()).abs().max())
        for x, y in pairs
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape == y.shape and x.numel()
    ]
    return f"max difference {max(gaps):.3g}" if gaps else "different results"


def _input_hint(cause: str) -> str:
    """What to change when the model cannot run on the input the services would give it."""
    if "channels" in cause:
        return (
            "the services feed 3-channel RGB images: a model for another number of channels needs a first "
            "layer (or a wrapper) that takes 3"
        )
    if "should be the same" in cause or "dtype" in cause.lower() or "scalar type" in cause.lower():
        return (
            "the services feed float32 images: serve a float32 model (model.float()); the cloud's AUTOCAST=bf16 "
            "runs its tails in bfloat16"
        )
    return "is the input size the model's? see INPUT_SIZE / --input-size"


def _storage(tensor: torch.Tensor) -> int | None:
    """The address of a tensor's storage; ``None`` for an empty one (or none at all)."""
    try:
        storage = tensor.untyped_storage()
    except (RuntimeError, NotImplementedError):  # NOTE: tensors without storage (sparse, nested...)
        return None
    return storage.data_ptr() if storage.nbytes() else None


_Summary = tuple[str, tuple[int, ...], torch.dtype | None] | None


def _summary(value: Any) -> _Summary:
    """What a cut needs to know about a value: a tensor's shape and dtype, a shape-like value's ints."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype)
    if isinstance(value, torch.Size):
        return ("size", tuple(int(v) for v in value), None)
    if isinstance(value, int) and not isinstance(value, bool):
        return ("int", (value,), None)
    if isinstance(value, tuple | list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return ("tuple" if isinstance(value, tuple) else "list", tuple(value), None)
    return None


def _item_major(single: torch.Tensor | None, batched: torch.Tensor | None, batch: int) -> bool:
    """Whether a batch of ``batch`` copies of one item holds that item's rows once per item, in order:
    then requests can be concatenated along the first dimension (the cloud's batching does)."""
    if single is None or batched is None:
        return single is None and batched is None
    if batched.numel() != batch * single.numel():
        return False
    expected = single.repeat(batch)
    return bool(torch.allclose(batched, expected, rtol=1e-3, atol=1e-6))


def _affine(samples: Sequence[tuple[int, int]]) -> tuple[int, int] | None:
    """``(slope, offset)`` with ``value == slope * batch + offset`` for every ``(batch, value)``, if any."""
    (b0, v0), (b1, v1) = samples[0], samples[1]
    if (v1 - v0) % (b1 - b0):
        return None
    slope = (v1 - v0) // (b1 - b0)
    offset = v0 - slope * b0
    return (slope, offset) if all(slope * b + offset == v for b, v in samples) else None


class ModelGraph:
    """The traced graph of one model with all its valid cuts; builds head/tail pairs.

    >>> graph = ModelGraph(torchvision.models.resnet18(), (1, 3, 224, 224))
    >>> head, tail = graph.split("layer3")
    >>> torch.equal(tail(*head(x)), model(x))
    True
    """

    def __init__(
        self,
        model: nn.Module,
        input_shape: Sequence[int] = (1, 3, 224, 224),
        options: TraceOptions | None = None,
    ) -> None:
        self.model = model
        self.input_shape = (1, *(int(s) for s in input_shape[1:]))
        self.options = options or TraceOptions()
        self.traced: TracedModel = trace_model(model, self.options)
        graph = self.traced.graph
        self._placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        if len(self._placeholders) != 1:
            raise ValueError(
                f"{type(model).__name__}.forward takes {len(self._placeholders)} inputs; "
                "only single-input models can be split"
            )
        self._compute = [n for n in graph.nodes if n.op in _COMPUTE_OPS]
        self._output = next(n for n in graph.nodes if n.op == "output")
        self._tensor_specs, self._value_specs, self._flops, self._tensor_nodes = self._profile()
        self.total_flops: int = sum(self._flops.values())
        """FLOPs of one forward pass at the trace input (multiply-adds counted twice)."""
        self._module_ends = self._find_module_ends()
        self._positions = self._find_positions()
        self._order = {node: i for i, node in enumerate(self._compute)}
        self.cuts: list[Cut]
        self.cuts, self._cut_at = self._name_cuts()
        self._by_name = self._index_names()

    # ---------------------------------------------------------------- analysis

    def _run(self, batch: int, counter: FlopCounterMode | None) -> _Profiler:
        shape = (batch, *self.input_shape[1:])
        # NOTE: the same item repeated, so that a batch-first tensor's rows repeat per item (checked below).
        example = torch.randn(self.input_shape, generator=torch.Generator().manual_seed(0)).repeat(batch, 1, 1, 1)
        profiler = _Profiler(self.traced.graph_module, counter)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                if counter is None:
                    profiler.returned = profiler.run(example)
                else:
                    with counter:
                        profiler.returned = profiler.run(example)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            # NOTE: the first line only: torch.fx appends the node it was executing and a pointer to its logs.
            cause = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise ValueError(
                f"{type(self.model).__name__} cannot run on a float32 input of shape {list(shape)}: {cause} "
                f"({_input_hint(cause)})"
            ) from exc
        finally:
            self.model.train(was_training)
        return profiler

    def _profile(self) -> tuple[dict[str, TensorSpec], dict[str, ValueSpec], dict[str, int], frozenset[str]]:
        """Run at batch 1 (shapes, FLOPs) and at two more batch sizes, to learn how each value scales.

        Also returns the names of the nodes whose output is a tensor (batch-first or not)."""
        first = self._run(1, flop_counter())
        self._check_graph_is_the_model(first.returned)
        runs = [(b, self._run(b, None)) for b in _PROBE_BATCHES]
        others = [(b, run.values) for b, run in runs]
        tensors: dict[str, TensorSpec] = {}
        values: dict[str, ValueSpec] = {}
        for name, summary in first.values.items():
            if summary is None or any(o.get(name) is None or o[name][0] != summary[0] for _, o in others):
                continue
            kind, items, dtype = summary
            series = [(1, items), *((b, o[name][1]) for b, o in others)]
            if kind == "tensor" and dtype is not None:
                if all(s[1:] == items[1:] and len(s) == len(items) for _, s in series) and items:
                    fit = _affine([(b, s[0]) for b, s in series])
                    if (
                        fit is not None
                        and fit[0] >= 1
                        and fit[1] == 0
                        and all(_item_major(first.rows.get(name), run.rows.get(name), b) for b, run in runs)
                    ):
                        tensors[name] = TensorSpec(name, items, dtype, per_item=fit[0])
                continue
            if len(items) > MAX_VALUE_ITEMS or any(len(s) != len(items) for _, s in series):
                continue
            fits = [_affine([(b, s[i]) for b, s in series]) for i in range(len(items))]
            if all(f is not None for f in fits):
                values[name] = ValueSpec(
                    name,
                    kind,  # type: ignore[arg-type]
                    tuple(f[0] for f in fits if f is not None),
                    tuple(f[1] for f in fits if f is not None),
                )
        tensor_nodes = frozenset(
            n for n, summary in first.values.items() if summary is not None and summary[0] == "tensor"
        )
        self._storages, self._mutated = first.storages, first.mutated
        return tensors, values, first.flops, tensor_nodes

    def _eager(self) -> Any:
        """The model itself (not its graph) on the batch-1 example, with the arguments bound for tracing;
        ``_NOT_CALLED`` when it cannot be called so (an input only passed by keyword)."""
        example = torch.randn(self.input_shape, generator=torch.Generator().manual_seed(0))
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                return self.model(example, **self.options.concrete_args)
        except TypeError:
            return _NOT_CALLED
        finally:
            self.model.train(was_training)

    def _check_graph_is_the_model(self, traced: Any) -> None:
        """The traced graph must compute what the model's forward does: tracing records tensor operations
        only, so a context manager around some of them (``torch.autocast``), Python-side state, or a branch on
        ``torch.fx``'s tracing flag would make every cut (``input`` and ``output`` too) silently differ from
        the model. A forward that differs from itself (random) is left to :meth:`logits_classes`."""
        eager = self._eager()
        if eager is _NOT_CALLED or _same_outputs(traced, eager):
            return
        if not _same_outputs(eager, self._eager()):
            return
        raise ValueError(
            f"{type(self.model).__name__} cannot be split: its torch.fx graph does not compute what its forward "
            f"does ({_difference(traced, eager)} on the same input): forward does something tracing cannot "
            "record, such as a torch.autocast (or other) context manager, Python-side state, or a branch on "
            "torch.fx's tracing flag. Move that code into a module traced as a leaf (leaf_modules / "
            "LEAF_MODULES) or out of forward"
        )

    def _find_module_ends(self) -> dict[str, int]:
        """For every module that owns at least one compute node: the position right after its last node."""
        ends: dict[str, int] = {}
        for index, node in enumerate(self._compute):
            scope = self.traced.node_scopes.get(node.name, "")
            parts = scope.split(".") if scope else []
            for depth in range(1, len(parts) + 1):
                ends[".".join(parts[:depth])] = index + 1
        return ends

    def _find_positions(self) -> list[_Position]:
        order = {node: i for i, node in enumerate(self._compute)}
        n_compute = len(self._compute)
        last_use: dict[fx.Node, int] = {}
        defined_at: dict[fx.Node, int] = {}
        for node in [*self._placeholders, *self._compute]:
            defined_at[node] = order.get(node, -1)
            uses = [order.get(user, n_compute) for user in node.users]
            if uses:
                last_use[node] = max(uses)
        positions = []
        for k in range(n_compute + 1):
            alive = [v for v, end in last_use.items() if defined_at[v] < k <= end]
            blocking = [v.name for v in alive if v.name not in self._tensor_specs and v.name not in self._value_specs]
            n_values = sum(v.name in self._value_specs for v in alive)
            if not blocking and (n_values > MAX_VALUES_PER_CUT or n_values == len(alive)):
                # NOTE: a cut needs a tensor to tell the batch size, and a bounded number of values.
                blocking = [v.name for v in alive if v.name in self._value_specs]
            position = _Position(alive, blocking)
            if not blocking:
                position = self._written_aliases(position, k, last_use)
            positions.append(position)
        return positions

    def _written_aliases(self, position: _Position, k: int, last_use: dict[fx.Node, int]) -> _Position:
        """Block a position where two tensors alive across it share memory (a view and its base, a module's
        in-place output and its input) and the tail writes into that memory in place while either is still
        used: in one process the write shows through both, but each crosses the wire (and the cloud's
        batching) as its own copy, so the tail would read a stale one and silently compute something else."""
        shared: dict[int, list[fx.Node]] = {}
        for value in position.alive:
            address = self._storages.get(value.name)
            if address is not None:
                shared.setdefault(address, []).append(value)
        for address, values in shared.items():
            if len(values) < 2:
                continue
            # NOTE: up to the last use of these values their memory is alive, so no other tensor reuses the address.
            end = max(last_use[v] for v in values)
            writer = next((n for n in self._compute[k : end + 1] if address in self._mutated.get(n.name, ())), None)
            if writer is not None:
                names = ", ".join(v.name for v in values)
                reason = (
                    f"{names} share memory and {writer.name!r} (after the cut) writes into it in place, which "
                    "copies sent over the wire would not see"
                )
                return _Position(position.alive, [v.name for v in values], reason)
        return position

    def _name_cuts(self) -> tuple[list[Cut], dict[int, int]]:
        """The cuts in execution order, and for every valid position the index of the cut that splits
        there (a dropped bookkeeping position maps to the neighbour carrying the same tensors)."""
        aliases_at: dict[int, list[str]] = {}
        for module, end in self._module_ends.items():
            aliases_at.setdefault(end, []).append(module)
        total_flops = sum(self._flops.values()) or 1
        cumulative = 0
        last = len(self._compute)
        candidates: list[tuple[int, tuple[str, ...], float, bool]] = []
        for k, pos in enumerate(self._positions):
            if k > 0:
                cumulative += self._flops.get(self._compute[k - 1].name, 0)
            if pos.blocking:
                continue
            aliases = tuple(sorted(aliases_at.get(k, []), key=lambda m: (m.count("."), m)))
            plain = k in (0, last) or bool(aliases) or not self._is_bookkeeping(self._compute[k - 1])
            candidates.append((k, aliases, cumulative / total_flops, plain))
        kept = self._drop_bookkeeping_twins(candidates)
        cuts: list[Cut] = []
        cut_at: dict[int, int] = {}
        taken: dict[str, int] = {}
        for k, aliases, share, plain in candidates:
            if kept[k] != k:
                continue
            pos = self._positions[k]
            tensors = tuple(self._tensor_specs[v.name] for v in pos.alive if v.name in self._tensor_specs)
            if k == 0:
                name = INPUT_CUT
            elif k == last:
                name = OUTPUT_CUT
            elif aliases:
                name = aliases[0]
            elif plain or not tensors:
                name = self._compute[k - 1].name
            else:
                # NOTE: named after what produced the newest tensor crossing, never after the bookkeeping node.
                by_name = {v.name: v for v in pos.alive}
                newest = max((by_name[t.name] for t in tensors), key=lambda v: self._order.get(v, -1))
                name = self._producer_name(newest, aliases_at)
            taken[name] = taken.get(name, 0) + 1
            if taken[name] > 1:
                name = f"{name}#{taken[name]}"
            cut_at[k] = len(cuts)
            cuts.append(
                Cut(
                    index=len(cuts),
                    name=name,
                    position=k,
                    node=self._compute[k - 1].name if k else "",
                    aliases=aliases,
                    tensors=tensors,
                    head_flops_share=share,
                    values=tuple(self._value_specs[v.name] for v in pos.alive if v.name in self._value_specs),
                )
            )
        for k, kept_k in kept.items():
            cut_at.setdefault(k, cut_at[kept_k])
        return cuts, cut_at

    def _is_bookkeeping(self, node: fx.Node) -> bool:
        """Indexing (``getitem``/``getattr``) or a node that computes no tensor (``dim``, ``size``, integer
        arithmetic, ``torch._assert``): no name for a cut."""
        if node.op == "call_module":
            return False
        return node.target in _INDEXING or node.name not in self._tensor_nodes

    def _drop_bookkeeping_twins(self, candidates: Sequence[tuple[int, tuple[str, ...], float, bool]]) -> dict[int, int]:
        """Map each valid position to the position of the cut kept for it: runs of neighbouring cuts that
        carry the same tensors keep their well-named cuts (or, when none is, the one shipping the fewest
        values); a dropped position maps to the nearest kept cut of its run."""
        kept: dict[int, int] = {}
        run: list[tuple[int, bool]] = []
        run_tensors: tuple[str, ...] | None = None

        def close() -> None:
            keep = [k for k, plain in run if plain]
            if not keep:
                keep = [min((k for k, _ in run), key=lambda k: (self._n_values(k), k))]
            for k, _ in run:
                kept[k] = k if k in keep else min(keep, key=lambda j: (abs(j - k), j))

        for k, _, _, plain in candidates:
            tensors = tuple(v.name for v in self._positions[k].alive if v.name in self._tensor_specs)
            if run and tensors != run_tensors:
                close()
                run = []
            run.append((k, plain))
            run_tensors = tensors
        if run:
            close()
        return kept

    def _n_values(self, position: int) -> int:
        return sum(v.name in self._value_specs for v in self._positions[position].alive)

    def _producer_name(self, node: fx.Node, aliases_at: dict[int, list[str]]) -> str:
        """What produced ``node``'s value: the outermost module ending at the producing node, else the
        producing module or function, or ``input``; indexing into a tensor is spelled out (``encoder[:,0]``)."""
        suffix = ""
        for _ in range(64):  # NOTE: bounded walk up a chain of indexing nodes
            if node.op == "placeholder":
                return (INPUT_CUT + suffix)[:_MAX_NAME_CHARS]
            if node.op != "call_module" and node.target in _INDEXING and isinstance(node.args[0], fx.Node):
                base = node.args[0]
                if base.name in self._tensor_nodes:
                    suffix = _index_text(node) + suffix
                node = base
                continue
            break
        modules = sorted(aliases_at.get(self._order.get(node, -2) + 1, []), key=lambda m: (m.count("."), m))
        if not modules:
            modules = [str(node.target) if node.op == "call_module" else node.name]
        name = modules[0]
        return (name + suffix)[:_MAX_NAME_CHARS]

    def _index_names(self) -> dict[str, int]:
        """Cut names first (unique, so each resolves to its own cut), then modules and FX node names."""
        by_name: dict[str, int] = {cut.name: cut.position for cut in self.cuts}
        for module, end in self._module_ends.items():
            by_name.setdefault(module, end)
        for k in range(1, len(self._positions)):
            by_name.setdefault(self._compute[k - 1].name, k)
        return by_name

    # ---------------------------------------------------------------- lookup

    def cuts_digest(self) -> str:
        """``sha256:<hex>`` over every cut's name, position, tensors and values: two sides that agree on
        it resolve every cut name and index to the same split."""
        described = [
            [c.name, c.position, [[t.name, list(t.shape), str(t.dtype), t.per_item] for t in c.tensors]]
            + [[v.name, v.kind, list(v.slopes), list(v.offsets)] for v in c.values]
            for c in self.cuts
        ]
        return "sha256:" + hashlib.sha256(json.dumps(described).encode()).hexdigest()

    def single_tensor_cuts(self) -> list[Cut]:
        return [c for c in self.cuts if c.single_tensor]

    def default_cut(self) -> Cut:
        """The single-tensor cut whose head runs closest to half the FLOPs (any cut when there is none;
        ``output`` for a model without a middle cut). Exists for every model."""
        middle = [c for c in self.single_tensor_cuts() if c.name not in (INPUT_CUT, OUTPUT_CUT)]
        middle = middle or [c for c in self.cuts if c.name not in (INPUT_CUT, OUTPUT_CUT)]
        if not middle:
            return self.cuts[-1]
        distance = {c.index: round(abs(c.head_flops_share - 0.5), 9) for c in middle}
        closest = min(distance.values())
        ties = [c for c in middle if distance[c.index] == closest]
        # NOTE: a function's cut at the share of an earlier module's end is inside the next block (the FLOP
        # counter saw nothing in between, e.g. fused attention): the module boundary is the better place.
        first_module = min((c.index for c in ties if c.aliases), default=len(self.cuts))
        ties = [c for c in ties if c.aliases or c.index < first_module]
        # NOTE: among equal shares, the outermost module (a block rather than its last layer).
        return min(ties, key=lambda c: (c.name.count("."), c.index))

    def logits_classes(self) -> int:
        """How many classes the model's logits have, checking that ``forward`` returns what the services
        serve: one floating-point tensor of shape ``(batch, classes)`` that depends only on each image and
        not on chance. A ``ValueError`` says what it returns instead (a tuple of auxiliary logits, a dict,
        ``1x10x1x1`` logits, a ``squeeze()`` that drops the batch dimension, a dropout left on)."""
        model = type(self.model).__name__
        returned = self._output.args[0]
        if not isinstance(returned, fx.Node):
            kind = type(returned).__name__.removeprefix("immutable_")
            fix = "out['logits']" if isinstance(returned, dict) else "out[0]"
            raise ValueError(
                f"{model}.forward returns a {kind} of {len(returned)} values (auxiliary outputs?); serving needs "
                f"the logits alone: wrap the model in a module whose forward returns them ({fix})"
            )
        if returned.op == "placeholder" or returned.name not in self._tensor_nodes:
            raise ValueError(
                f"{model}.forward returns {self._described(returned)}, not a tensor of logits; serving needs the "
                "logits alone: wrap the model in a module whose forward returns them"
            )
        spec = self._tensor_specs.get(returned.name)
        if spec is None:
            raise ValueError(f"{model}.forward's logits {self._why_not_batch_first(returned)}")
        if spec.per_item != 1 or len(spec.shape) != 2 or not spec.dtype.is_floating_point:
            shape = "x".join(str(d) for d in spec.shape)
            dtype = str(spec.dtype).removeprefix("torch.")
            raise ValueError(
                f"{model}.forward returns a {dtype} tensor of shape {shape} for one image; serving needs float "
                "logits of shape (batch, classes): flatten them in forward (torch.flatten(x, 1))"
            )
        if self._mixes_images():
            raise ValueError(f"{model}.forward's logits {_MIXED_ROWS}")
        return spec.shape[1]

    def _mixes_images(self) -> bool:
        """Whether an image's logits change when another image shares its batch. The profile's batches repeat
        one image, which hides a forward that mixes them (``x - x.mean(0)``); the services batch requests
        together, so such a model would answer each client according to the others. One image is run beside
        two others in turn, at the same batch size: the same kernels, so its row comes out the same unless
        the model mixes rows (one image alone against a batch of two is not: kernels for another batch size
        round differently, and a deep model with random weights grows that past any fixed tolerance)."""
        generator = torch.Generator().manual_seed(1)
        image, *others = (torch.randn(self.input_shape, generator=generator) for _ in range(3))
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                rows = [self.traced.graph_module(torch.cat([image, other]))[:1] for other in others]
        finally:
            self.model.train(was_training)
        return not torch.allclose(rows[0], rows[1], rtol=1e-4, atol=1e-5)

    def _described(self, node: fx.Node) -> str:
        if node.op == "placeholder":
            return "its input"
        target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
        return f"the result of {target or node.name!r}"

    def _why_not_batch_first(self, node: fx.Node) -> str:
        """Why a tensor is not batch-first: chance (two runs on one input differ), its shape, or its rows."""
        first, again, pair = self._run(1, None), self._run(1, None), self._run(2, None)
        for name in (n.name for n in self._compute):
            if name in first.rows and name in again.rows and not torch.equal(first.rows[name], again.rows[name]):
                return (
                    f"are random: {name!r} differs between two runs on the same input in eval mode (dropout "
                    "with training=True, torch.rand...), so no answer can be checked against the model. "
                    "Make forward deterministic in eval mode"
                )
        one, two = first.values.get(node.name), pair.values.get(node.name)
        shapes = [list(v[1]) if v is not None else None for v in (one, two)]
        if not shapes[0] or not shapes[1] or shapes[1][0] != 2 * shapes[0][0]:
            return (
                f"do not have a batch dimension (shape {shapes[0]} for one image, {shapes[1]} for two: a squeeze()?); "
                "serving needs shape (batch, classes)"
            )
        return _MIXED_ROWS

    def cut(self, cut: str | int | Cut) -> Cut:
        """Resolve a cut by name (cut name, module, node, ``input``/``output``, ``default``) or by index into
        :attr:`cuts`."""
        if isinstance(cut, Cut):
            return self.cuts[cut.index]
        # NOTE: ASCII digits only: str.isdigit() also accepts '\u0663' (Arabic-Indic three), which int() reads as 3.
        if isinstance(cut, int) or (
            isinstance(cut, str) and cut.removeprefix("-").isascii() and cut.removeprefix("-").isdigit()
        ):
            index = int(cut)
            if not -len(self.cuts) <= index < len(self.cuts):
                raise ValueError(f"cut index {index} out of range: this model has {len(self.cuts)} cuts")
            return self.cuts[index]
        position = self._by_name.get(cut)
        if position is None and cut == DEFAULT_CUT:
            return self.default_cut()
        if position is None:
            close = difflib.get_close_matches(cut, list(self._by_name), n=5, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(
                f"unknown cut {cut!r} for {type(self.model).__name__}.{hint} "
                "List the valid cuts with list_cuts() or `splitinfer cuts MODEL`."
            )
        blocking, reason = self._positions[position].blocking, self._positions[position].reason
        if blocking:
            nearby = self._nearest_valid(position)
            why = reason or (
                f"value(s) {', '.join(blocking)} alive across it are neither batch-first tensors nor "
                "shape-derived integers"
            )
            raise ValueError(
                f"cut {cut!r} cannot be split: {why}. Nearest valid cuts: {', '.join(repr(c.name) for c in nearby)}."
            )
        return self.cuts[self._cut_at[position]]

    def _nearest_valid(self, position: int) -> list[Cut]:
        return sorted(self.cuts, key=lambda c: abs(c.position - position))[:3]

    # ---------------------------------------------------------------- splitting

    def split(self, cut: str | int | Cut) -> tuple[fx.GraphModule, fx.GraphModule]:
        """Return ``(head, tail)`` with ``tail(*head(x))`` equal to ``model(x)``.

        ``head`` returns a tuple of the tensors alive across the cut, in the order of ``cut.tensors``,
        then the non-tensor values in the order of ``cut.values``; ``tail`` takes them in that order.
        Both halves share the model's parameters; neither copies them.
        """
        resolved = self.cut(cut)
        by_name = {n.name: n for n in self.traced.graph.nodes}
        alive = [by_name[t.name] for t in resolved.tensors] + [by_name[v.name] for v in resolved.values]
        head_nodes = self._compute[: resolved.position]
        tail_nodes = self._compute[resolved.position :]
        label = re.sub(r"\W", "_", resolved.name)
        head = self._build(self._placeholders, head_nodes, alive, f"Head_{label}")
        tail = self._build(alive, tail_nodes, None, f"Tail_{label}")
        return head, tail

    def _build(
        self,
        inputs: Sequence[fx.Node],
        nodes: Iterable[fx.Node],
        outputs: Sequence[fx.Node] | None,
        class_name: str,
    ) -> fx.GraphModule:
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        for value in inputs:
            env[value] = graph.placeholder(value.name)

        def lookup(node: fx.Node) -> fx.Node:
            if node not in env:
                if node.op != "get_attr":
                    raise RuntimeError(f"internal error: {node.name} is not available in {class_name}")
                # NOTE: parameters and buffers are re-read on each side, never shipped.
                env[node] = graph.node_copy(node)
            return env[node]

        for node in nodes:
            env[node] = graph.node_copy(node, lookup)
        if outputs is None:
            graph.output(fx.node.map_arg(self._output.args[0], lookup))
        else:
            graph.output(tuple(lookup(v) for v in outputs))
        graph.lint()
        # NOTE: parameters and buffers are taken from the model as it is now, not from the traced copy: a
        # GraphModule keeps the buffer tensors it was built with, and model.to(device) replaces buffers (the
        # cloud moves the model after tracing it; a tail holding the old CPU buffer fails on a GPU).
        module = fx.GraphModule(self.model, graph, class_name)
        module.train(self.model.training)
        return module


def _index_text(node: fx.Node) -> str:
    """``[:,0]`` for ``x[:, 0]``, ``.T`` for ``x.T``; ``?`` for an index computed at run time."""
    if node.target is builtins.getattr:
        return f".{node.args[1]}" if len(node.args) > 1 else ""

    def bound(value: Any) -> str:
        return "" if value is None else item(value)

    def item(index: Any) -> str:
        if isinstance(index, slice):
            parts = [bound(index.start), bound(index.stop)] + ([bound(index.step)] if index.step is not None else [])
            return ":".join(parts)
        if index is None:
            return "None"
        if index is Ellipsis:
            return "..."
        if isinstance(index, bool | int):
            return str(index)
        return "?"

    index = node.args[1] if len(node.args) > 1 else None
    if isinstance(index, tuple | list):
        return "[" + ",".join(item(i) for i in index) + "]"
    return f"[{item(index)}]"


def list_cuts(
    model: nn.Module, input_shape: Sequence[int] = (1, 3, 224, 224), options: TraceOptions | None = None
) -> list[Cut]:
    """Every valid cut of ``model`` in execution order, ``input`` first and ``output`` last."""
    return ModelGraph(model, input_shape, options).cuts


def split_model(
    model: nn.Module,
    cut: str | int | Cut,
    input_shape: Sequence[int] = (1, 3, 224, 224),
    options: TraceOptions | None = None,
) -> tuple[fx.GraphModule, fx.GraphModule]:
    """Split ``model`` at ``cut`` into ``(head, tail)`` with ``tail(*head(x)) == model(x)``."""
    return ModelGraph(model, input_shape, options).split(cut)
