"""Non-tensor values alive across a cut (``bs = x.size(0)``...), each integer a function of the batch size.

The splitter finds them (:mod:`shared.splitting`), the wire format ships them and the receiver checks each
one against what it expects for the payload's batch (:mod:`shared.wire`): one description for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

__all__ = ["ValueKind", "ValueSpec", "WireValue"]

ValueKind = Literal["int", "tuple", "list", "size"]
WireValue = int | tuple[int, ...] | list[int] | torch.Size
"""A non-tensor value as the wire carries it and the tail receives it."""


@dataclass(frozen=True)
class ValueSpec:
    """A non-tensor value: its kind and each integer as ``slope * batch + offset``."""

    name: str
    kind: ValueKind
    slopes: tuple[int, ...]
    offsets: tuple[int, ...]

    def items_at(self, batch: int) -> list[int]:
        """The value's integers for a batch of ``batch`` items."""
        return [s * batch + o for s, o in zip(self.slopes, self.offsets, strict=True)]

    def at(self, batch: int) -> WireValue:
        """The value for a batch of ``batch`` items."""
        items = self.items_at(batch)
        if self.kind == "int":
            return items[0]
        if self.kind == "list":
            return items
        if self.kind == "size":
            return torch.Size(items)
        return tuple(items)

    def to_json(self) -> dict[str, Any]:
        value = self.at(1)
        return {
            "name": self.name,
            "kind": self.kind,
            "value_at_batch_1": list(value) if isinstance(value, tuple | list) else value,
            "per_item": list(self.slopes) if self.kind != "int" else self.slopes[0],
        }
