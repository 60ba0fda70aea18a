"""Counting FLOPs: torch's ``FlopCounterMode``, plus the fused attention kernels it has no formula for.

On CPU, ``F.scaled_dot_product_attention`` runs ``_scaled_dot_product_flash_attention_for_cpu`` and an
``nn.MultiheadAttention`` in inference ``_native_multi_head_attention``; torch counts neither, so a
vision transformer's attention counted as free and its cuts' FLOP shares were wrong.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

__all__ = ["flop_counter"]

_aten = torch.ops.aten


def _cpu_sdpa_flops(
    query_shape: tuple[int, ...], key_shape: tuple[int, ...], value_shape: tuple[int, ...], *args: Any, **kwargs: Any
) -> int:
    """The same count as torch's for the other attention kernels: the scores and the weighted sum."""
    return int(sdpa_flop_count(query_shape, key_shape, value_shape))  # type: ignore[no-untyped-call]


def _native_mha_flops(
    query_shape: tuple[int, ...],
    key_shape: tuple[int, ...],
    value_shape: tuple[int, ...],
    embed_dim: int,
    num_heads: int,
    *args: Any,
    **kwargs: Any,
) -> int:
    """``nn.MultiheadAttention``'s fused kernel (batch first): the q, k, v projections, the scores and the
    weighted sum over every head, and the output projection; 2 FLOPs per multiply-add."""
    batch, queries, _ = query_shape
    keys = key_shape[1]
    projections = 2 * batch * (queries + 2 * keys) * embed_dim * embed_dim
    attention = 2 * 2 * batch * queries * keys * embed_dim  # every head: (queries x keys) x head dim, twice
    output = 2 * batch * queries * embed_dim * embed_dim
    return projections + attention + output


def flop_counter() -> FlopCounterMode:
    """A ``FlopCounterMode`` (no display) that also counts the fused attention kernels."""
    return FlopCounterMode(
        display=False,
        custom_mapping={
            _aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
            _aten._native_multi_head_attention: _native_mha_flops,
        },
    )
