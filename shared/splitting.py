"""Graph-level model splitting: list every valid cut of a model and split it into head and tail.

A *cut* is a position in the model's FX graph (in execution order): the head runs every node before
it, the tail every node after it. The tensors *alive across* the cut are the values the head
computed (or received as input) that the tail still needs; they are what travels from edge to cloud.
A cut is valid when every value alive across it is a tensor. Parameters and buffers never cross a
cut: each half reads them from the (shared) model itself.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.utils.flop_counter import FlopCounterMode

from shared.tracing import TracedModel, trace_model

__all__ = [
    "INPUT_CUT",
    "OUTPUT_CUT",
    "Cut",
    "ModelGraph",
    "TensorSpec",
    "list_cuts",
    "split_model",
]

INPUT_CUT = "input"
OUTPUT_CUT = "output"
_COMPUTE_OPS = ("call_function", "call_method", "call_module")


@dataclass(frozen=True)
class TensorSpec:
    """One tensor alive across a cut, as measured with the trace input (batch size 1)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

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
        }


@dataclass(frozen=True)
class Cut:
    """A valid place to split a model."""

    index: int
    """Position in :meth:`ModelGraph.cuts` (execution order)."""
    name: str
    """Stable name: ``input``, ``output``, the shortest module ending here, or the last head node."""
    position: int
    """Number of compute nodes the head runs."""
    node: str
    """FX name of the last node the head runs (empty for ``input``)."""
    aliases: tuple[str, ...]
    """Every module that ends exactly here, outermost first."""
    tensors: tuple[TensorSpec, ...]
    head_flops_share: float
    """Share of the model's FLOPs (multiply-adds counted twice) that the head runs."""

    @property
    def single_tensor(self) -> bool:
        return len(self.tensors) == 1

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
        }


@dataclass
class _Position:
    alive: list[fx.Node]
    blocking: list[str] = field(default_factory=list)


class _Profiler(fx.Interpreter):
    """Runs the graph once, recording each node's output and FLOPs."""

    def __init__(self, graph_module: fx.GraphModule, counter: FlopCounterMode) -> None:
        super().__init__(graph_module)
        self.counter = counter
        self.values: dict[str, Any] = {}
        self.flops: dict[str, int] = {}

    def run_node(self, n: fx.Node) -> Any:
        before = self.counter.get_total_flops()
        result = super().run_node(n)
        self.flops[n.name] = self.counter.get_total_flops() - before
        self.values[n.name] = result
        return result


class ModelGraph:
    """The traced graph of one model with all its valid cuts; builds head/tail pairs.

    >>> graph = ModelGraph(torchvision.models.resnet18(), (1, 3, 224, 224))
    >>> head, tail = graph.split("layer3")
    >>> torch.equal(tail(*head(x)), model(x))
    True
    """

    def __init__(self, model: nn.Module, input_shape: Sequence[int] = (1, 3, 224, 224)) -> None:
        self.model = model
        self.input_shape = tuple(int(s) for s in input_shape)
        self.traced: TracedModel = trace_model(model)
        graph = self.traced.graph
        self._placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        if len(self._placeholders) != 1:
            raise ValueError(
                f"{type(model).__name__}.forward takes {len(self._placeholders)} inputs; "
                "only single-input models can be split"
            )
        self._compute = [n for n in graph.nodes if n.op in _COMPUTE_OPS]
        self._output = next(n for n in graph.nodes if n.op == "output")
        self._specs, self._flops = self._profile()
        self.total_flops: int = sum(self._flops.values())
        """FLOPs of one forward pass at the trace input (multiply-adds counted twice)."""
        self._module_ends = self._find_module_ends()
        self._positions = self._find_positions()
        self.cuts: list[Cut] = self._name_cuts()
        self._by_name = self._index_names()

    # ---------------------------------------------------------------- analysis

    def _profile(self) -> tuple[dict[str, TensorSpec | None], dict[str, int]]:
        example = torch.randn(self.input_shape, generator=torch.Generator().manual_seed(0))
        was_training = self.model.training
        self.model.eval()
        counter = FlopCounterMode(display=False)
        profiler = _Profiler(self.traced.graph_module, counter)
        try:
            with torch.no_grad(), counter:
                profiler.run(example)
        finally:
            self.model.train(was_training)
        specs: dict[str, TensorSpec | None] = {}
        for name, value in profiler.values.items():
            specs[name] = TensorSpec(name, tuple(value.shape), value.dtype) if isinstance(value, torch.Tensor) else None
        return specs, profiler.flops

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
            blocking = [v.name for v in alive if self._specs.get(v.name) is None]
            positions.append(_Position(alive, blocking))
        return positions

    def _name_cuts(self) -> list[Cut]:
        aliases_at: dict[int, list[str]] = {}
        for module, end in self._module_ends.items():
            aliases_at.setdefault(end, []).append(module)
        total_flops = sum(self._flops.values()) or 1
        cumulative = 0
        cuts: list[Cut] = []
        last = len(self._compute)
        for k, pos in enumerate(self._positions):
            if k > 0:
                cumulative += self._flops.get(self._compute[k - 1].name, 0)
            if pos.blocking:
                continue
            aliases = tuple(sorted(aliases_at.get(k, []), key=lambda m: (m.count("."), m)))
            if k == 0:
                name = INPUT_CUT
            elif k == last:
                name = OUTPUT_CUT
            else:
                name = aliases[0] if aliases else self._compute[k - 1].name
            specs = tuple(s for v in pos.alive if (s := self._specs[v.name]) is not None)
            cuts.append(
                Cut(
                    index=len(cuts),
                    name=name,
                    position=k,
                    node=self._compute[k - 1].name if k else "",
                    aliases=aliases,
                    tensors=specs,
                    head_flops_share=cumulative / total_flops,
                )
            )
        return cuts

    def _index_names(self) -> dict[str, int]:
        by_name: dict[str, int] = {}
        for k in range(len(self._positions)):
            if k:
                by_name.setdefault(self._compute[k - 1].name, k)
        for module, end in self._module_ends.items():
            by_name[module] = end
        by_name[INPUT_CUT] = 0
        by_name[OUTPUT_CUT] = len(self._compute)
        return by_name

    # ---------------------------------------------------------------- lookup

    def single_tensor_cuts(self) -> list[Cut]:
        return [c for c in self.cuts if c.single_tensor]

    def cut(self, cut: str | int | Cut) -> Cut:
        """Resolve a cut by name (module, node, ``input``/``output``) or by index into :attr:`cuts`."""
        if isinstance(cut, Cut):
            return self.cuts[cut.index]
        if isinstance(cut, int) or (isinstance(cut, str) and cut.lstrip("-").isdigit()):
            index = int(cut)
            if not -len(self.cuts) <= index < len(self.cuts):
                raise ValueError(f"cut index {index} out of range: this model has {len(self.cuts)} cuts")
            return self.cuts[index]
        position = self._by_name.get(cut)
        if position is None:
            close = difflib.get_close_matches(cut, list(self._by_name), n=5, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(
                f"unknown cut {cut!r} for {type(self.model).__name__}.{hint} "
                "List the valid cuts with list_cuts() or `splitinfer cuts MODEL`."
            )
        blocking = self._positions[position].blocking
        if blocking:
            nearby = self._nearest_valid(position)
            raise ValueError(
                f"cut {cut!r} cannot be split: non-tensor value(s) {', '.join(blocking)} are alive across it. "
                f"Nearest valid cuts: {', '.join(repr(c.name) for c in nearby)}."
            )
        return next(c for c in self.cuts if c.position == position)

    def _nearest_valid(self, position: int) -> list[Cut]:
        return sorted(self.cuts, key=lambda c: abs(c.position - position))[:3]

    # ---------------------------------------------------------------- splitting

    def split(self, cut: str | int | Cut) -> tuple[fx.GraphModule, fx.GraphModule]:
        """Return ``(head, tail)`` with ``tail(*head(x))`` equal to ``model(x)``.

        ``head`` returns a tuple of the tensors alive across the cut, in the order of ``cut.tensors``.
        Both halves share the model's parameters; neither copies them.
        """
        resolved = self.cut(cut)
        by_name = {n.name: n for n in self.traced.graph.nodes}
        alive = [by_name[t.name] for t in resolved.tensors]
        head_nodes = self._compute[: resolved.position]
        tail_nodes = self._compute[resolved.position :]
        head = self._build(self._placeholders, head_nodes, alive, f"Head_{resolved.name}")
        tail = self._build(alive, tail_nodes, None, f"Tail_{resolved.name}")
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
        module = fx.GraphModule(self.traced.graph_module, graph, class_name)
        module.train(self.model.training)
        return module


def list_cuts(model: nn.Module, input_shape: Sequence[int] = (1, 3, 224, 224)) -> list[Cut]:
    """Every valid cut of ``model`` in execution order, ``input`` first and ``output`` last."""
    return ModelGraph(model, input_shape).cuts


def split_model(
    model: nn.Module, cut: str | int | Cut, input_shape: Sequence[int] = (1, 3, 224, 224)
) -> tuple[fx.GraphModule, fx.GraphModule]:
    """Split ``model`` at ``cut`` into ``(head, tail)`` with ``tail(*head(x)) == model(x)``."""
    return ModelGraph(model, input_shape).split(cut)
