"""Symbolic tracing that remembers which module every graph node came from."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from types import ModuleType
from typing import Any

from torch import fx, nn

__all__ = ["TracedModel", "trace_model"]


def _torchvision_ops() -> tuple[ModuleType | None, tuple[type[nn.Module], ...]]:
    try:
        import torchvision.ops
    except ImportError:  # pragma: no cover - torchvision is a dependency, but splitting does not need it
        return None, ()
    leaves = tuple(
        obj for _, obj in inspect.getmembers(torchvision.ops) if inspect.isclass(obj) and issubclass(obj, nn.Module)
    )
    return torchvision.ops, leaves


class _ScopeTracer(fx.Tracer):
    """An FX tracer that records, for every node, the qualified name of the module it was created in.

    NOTE: torchvision's ops (``Conv2dNormActivation``, ``SqueezeExcitation``, ``StochasticDepth``...) are
    leaves, as in ``torchvision.models.feature_extraction``: their insides are never useful cut points and
    some are not traceable.
    """

    def __init__(self) -> None:
        ops_module, self._leaf_types = _torchvision_ops()
        autowrap: tuple[ModuleType, ...] = (math,) if ops_module is None else (math, ops_module)
        super().__init__(autowrap_modules=autowrap)  # type: ignore[arg-type]  # torch annotates a 1-tuple
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


def trace_model(model: nn.Module) -> TracedModel:
    """Trace ``model`` in eval mode (control flow such as auxiliary heads depends on it).

    The model's training flag is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        tracer = _ScopeTracer()
        try:
            graph = tracer.trace(model)
        except Exception as exc:  # FX raises many types (TraceError, TypeError, RuntimeError...)
            raise ValueError(
                f"{type(model).__name__} cannot be split: torch.fx symbolic tracing failed ({exc}). "
                "Models with data-dependent control flow need torch.fx.wrap() around that code."
            ) from exc
        graph_module = fx.GraphModule(tracer.root, graph, type(model).__name__)
    finally:
        model.train(was_training)
    scopes = {node.name: tracer.node_scopes.get(node, "") for node in graph.nodes}
    return TracedModel(graph_module, scopes)
