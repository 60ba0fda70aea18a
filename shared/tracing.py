"""Symbolic tracing that remembers which module every graph node came from.

Tracer options follow torchvision's ``create_feature_extractor(tracer_kwargs=, concrete_args=)``:
:class:`TraceOptions` names extra leaf modules, functions and modules to autowrap, and arguments to
bind to constants. A model's optional ``forward`` arguments (``forward(x, mask=None)``) are bound to
their defaults, so only the first positional input remains. For models built by timm, timm's own
not-traceable lists (``get_notrace_modules()``/``get_notrace_functions()``) are applied automatically.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch
from torch import fx, nn

__all__ = ["TraceOptions", "TracedModel", "trace_model"]

_ASSERTIONS: tuple[Any, ...] = (torch._assert, getattr(fx._symbolic_trace, "_assert_is_none", None))


@dataclass(frozen=True)
class TraceOptions:
    """What to pass to the FX tracer, beyond this project's defaults."""

    leaf_modules: tuple[type[nn.Module], ...] = ()
    """Module classes traced as one opaque call (their insides are never cut points)."""
    autowrap_functions: tuple[Callable[..., Any], ...] = ()
    """Functions recorded as one call instead of being traced through."""
    autowrap_modules: tuple[ModuleType, ...] = ()
    """Python modules whose functions are all autowrapped (``math`` always is)."""
    concrete_args: Mapping[str, Any] = field(default_factory=dict)
    """``forward`` arguments bound to constants (optional arguments default to their defaults)."""
    timm_notrace: bool = True
    """Add timm's not-traceable modules and functions when the model contains timm modules."""

    def to_json(self) -> dict[str, Any]:
        return {
            "leaf_modules": [_qualname(t) for t in self.leaf_modules],
            "autowrap_functions": [_qualname(f) for f in self.autowrap_functions],
            "autowrap_modules": [m.__name__ for m in self.autowrap_modules],
            "concrete_args": {k: repr(v) for k, v in sorted(self.concrete_args.items())},
            "timm_notrace": self.timm_notrace,
        }


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _torchvision_ops() -> tuple[ModuleType | None, tuple[type[nn.Module], ...]]:
    try:
        import torchvision.ops
    except ImportError:  # pragma: no cover - torchvision is a dependency, but splitting does not need it
        return None, ()
    leaves = tuple(
        obj for _, obj in inspect.getmembers(torchvision.ops) if inspect.isclass(obj) and issubclass(obj, nn.Module)
    )
    return torchvision.ops, leaves


def _uses_timm(model: nn.Module) -> bool:
    return any(type(m).__module__.startswith("timm.") for m in model.modules())


def _timm_notrace() -> tuple[tuple[type[nn.Module], ...], tuple[Callable[..., Any], ...]]:
    try:
        from timm.layers import _fx as timm_fx
    except ImportError:  # pragma: no cover - timm is optional
        return (), ()
    listed: list[Any] = list(timm_fx.get_notrace_modules())  # type: ignore[no-untyped-call]
    modules = tuple(m for m in listed if inspect.isclass(m) and issubclass(m, nn.Module))
    functions = tuple(f for f in timm_fx.get_notrace_functions() if callable(f))  # type: ignore[no-untyped-call]
    return modules, functions


class _ScopeTracer(fx.Tracer):
    """An FX tracer that records, for every node, the qualified name of the module it was created in.

    NOTE: torchvision's ops (``Conv2dNormActivation``, ``SqueezeExcitation``, ``StochasticDepth``...) are
    leaves, as in ``torchvision.models.feature_extraction``: their insides are never useful cut points and
    some are not traceable.
    """

    def __init__(
        self,
        leaf_modules: Sequence[type[nn.Module]],
        autowrap_functions: Sequence[Callable[..., Any]],
        autowrap_modules: Sequence[ModuleType],
    ) -> None:
        ops_module, ops_leaves = _torchvision_ops()
        self._leaf_types = (*ops_leaves, *leaf_modules)
        modules = [math, *([] if ops_module is None else [ops_module]), *autowrap_modules]
        super().__init__(
            autowrap_modules=tuple(dict.fromkeys(modules)),  # type: ignore[arg-type]  # torch annotates a 1-tuple
            autowrap_functions=tuple(dict.fromkeys(autowrap_functions)),
        )
        self._scope = ""
        self.node_scopes: dict[fx.Node, str] = {}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self._leaf_types and isinstance(m, self._leaf_types):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(
        self,
        m: nn.Module,
        forward: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        outer = self._scope
        try:
            self._scope = self.path_of_module(m)
            return super().call_module(m, forward, args, kwargs)
        finally:
            self._scope = outer

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        self.node_scopes[node] = self._scope
        return node


class TracedModel:
    """A model's FX graph plus the module scope of each node."""

    def __init__(self, graph_module: fx.GraphModule, node_scopes: dict[str, str]) -> None:
        self.graph_module = graph_module
        self.node_scopes = node_scopes

    @property
    def graph(self) -> fx.Graph:
        return self.graph_module.graph


def _bound_defaults(model: nn.Module, given: Mapping[str, Any]) -> dict[str, Any]:
    """``concrete_args`` for every ``forward`` argument after the first: given, or its default."""
    parameters = list(inspect.signature(model.forward).parameters.values())
    positional = [
        p
        for p in parameters
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in given
    ]
    if not positional:
        varargs = any(p.kind is p.VAR_POSITIONAL for p in parameters)
        hint = ": it takes only *args; name its input (forward(self, x))" if varargs else ""
        raise ValueError(f"{type(model).__name__}.forward takes no tensor input{hint}")
    concrete = dict(given)
    for p in positional[1:]:
        if p.default is p.empty:
            raise ValueError(
                f"{type(model).__name__}.forward takes more than one input ({positional[0].name!r}, {p.name!r}, "
                "...); only single-input models can be split (bind the others with concrete_args)"
            )
        concrete[p.name] = p.default
    return concrete


def _drop_bound_placeholders(graph: fx.Graph, model_name: str) -> None:
    """Remove the placeholders FX keeps for bound arguments, with the assertions that check them."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    for placeholder in placeholders[1:]:
        reached: list[fx.Node] = []
        frontier = [placeholder]
        while frontier:
            node = frontier.pop()
            if node in reached:
                continue
            reached.append(node)
            frontier.extend(node.users)
        for node in reached[1:]:
            if node.op == "output" or (not node.users and node.target not in _ASSERTIONS):
                raise ValueError(
                    f"{model_name} cannot be split: bound argument {placeholder.target!r} is used by the computation"
                )
        order = {n: i for i, n in enumerate(graph.nodes)}
        for node in sorted(reached, key=order.__getitem__, reverse=True):
            graph.erase_node(node)


def trace_model(model: nn.Module, options: TraceOptions | None = None) -> TracedModel:
    """Trace ``model`` in eval mode (control flow such as auxiliary heads depends on it).

    The model's training flag is restored afterwards.
    """
    options = options or TraceOptions()
    if isinstance(model, torch.jit.ScriptModule):
        raise ValueError(
            f"{type(model).__name__} is a TorchScript module, which torch.fx cannot split: pass the nn.Module itself "
            "(before torch.jit.script or torch.jit.trace)"
        )
    if type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
        raise ValueError("a torch.compile'd module cannot be split: pass the module it wraps (model._orig_mod)")
    leaves, functions = list(options.leaf_modules), list(options.autowrap_functions)
    if options.timm_notrace and _uses_timm(model):
        timm_leaves, timm_functions = _timm_notrace()
        leaves += timm_leaves
        functions += timm_functions
    concrete = _bound_defaults(model, options.concrete_args)
    was_training = model.training
    model.eval()
    try:
        tracer = _ScopeTracer(leaves, functions, options.autowrap_modules)
        try:
            graph = tracer.trace(model, concrete_args=concrete or None)
        except Exception as exc:  # FX raises many types (TraceError, TypeError, RuntimeError...)
            raise ValueError(
                f"{type(model).__name__} cannot be split: torch.fx symbolic tracing failed ({exc}). "
                "Models with data-dependent control flow need torch.fx.wrap() around that code, "
                "or leaf_modules/autowrap_functions in the tracer options."
            ) from exc
        _drop_bound_placeholders(graph, type(model).__name__)
        graph_module = fx.GraphModule(tracer.root, graph, type(model).__name__)
    finally:
        model.train(was_training)
    scopes = {node.name: tracer.node_scopes.get(node, "") for node in graph.nodes}
    return TracedModel(graph_module, scopes)
