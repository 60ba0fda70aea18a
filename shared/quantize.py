"""Quantizers behind the activation codecs: per-channel affine ``b``-bit, top-K sparsification, error budget.

All work per *row*: a (sample, channel) pair for tensors of rank >= 3 (channel = dim 1), a sample for
rank <= 2. A row gets ``scale`` (F32) and ``zero_point`` (U8); its values are ``x = (q - zero_point) * scale``
with ``q`` an unsigned integer. The range always includes 0, so zeros (post-ReLU, or dropped by top-K)
stay exact zeros (``q = zero_point``).
"""

from __future__ import annotations

import math

import torch

__all__ = ["Quantized", "dequantize", "quantize_affine", "quantize_budget", "row_shape", "top_k_rows"]

Quantized = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""``(q as uint8 in the tensor's shape, scale F32 [rows], zero_point U8 [rows])``."""


def row_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of the per-row parameters of a tensor of ``shape``."""
    return shape[:2] if len(shape) >= 3 else shape[:1]


def _rows(values: torch.Tensor) -> torch.Tensor:
    if values.dim() == 0:
        raise ValueError("quantized codecs need tensors with a batch dimension")
    rows = math.prod(row_shape(tuple(values.shape)))
    return values.reshape(rows, values.numel() // rows if rows else 0)


def top_k_rows(values: torch.Tensor, keep_percent: int) -> torch.Tensor:
    """Zero all but the ``keep_percent`` % largest magnitudes of every row (ties at the threshold kept)."""
    rows = _rows(values)
    width = rows.shape[1]
    keep = max(1, math.ceil(width * keep_percent / 100))
    if width == 0 or keep >= width:
        return values
    magnitude = rows.abs()
    threshold = magnitude.kthvalue(width - keep + 1, dim=1, keepdim=True).values
    return torch.where(magnitude >= threshold, rows, torch.zeros_like(rows)).reshape(values.shape)


def quantize_affine(values: torch.Tensor, bits: int) -> Quantized:
    """Per-row affine quantization to ``bits`` bits over the row's range (extended to include 0)."""
    levels = (1 << bits) - 1
    rows = _rows(values.detach().float())
    low, high = _range(rows)
    scale = (high - low) / levels
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero_point = torch.clamp(torch.round(-low / scale), 0, levels)
    q = _levels(rows, scale, zero_point, levels)
    params = row_shape(tuple(values.shape))
    return (
        q.to(torch.uint8).reshape(values.shape),
        scale.reshape(params).contiguous(),
        zero_point.to(torch.uint8).reshape(params).contiguous(),
    )


def _range(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's smallest and largest value, extended to include 0."""
    if not rows.shape[1]:
        return torch.zeros(rows.shape[0]), torch.zeros(rows.shape[0])
    # NOTE: amin and amax, not aminmax: on CPU, for rows of a few hundred values, aminmax took 4x as long
    return rows.amin(dim=1).clamp(max=0.0), rows.amax(dim=1).clamp(min=0.0)


def _levels(rows: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, levels: int) -> torch.Tensor:
    """``clamp(round(rows / scale) + zero_point, 0, levels)`` per row, in place on one new tensor."""
    return torch.div(rows, scale[:, None]).round_().add_(zero_point[:, None]).clamp_(0, levels)


def _uniform_step(
    rows: torch.Tensor, step: torch.Tensor, row_range: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize every row with ``step`` (one per row), widened where 256 levels would not cover the row
    (``row_range``: :func:`_range` of the rows)."""
    low, high = row_range
    scale = torch.maximum(step, (high - low) / 255)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero_point = torch.clamp(torch.round(-low / scale), 0, 255)
    q = _levels(rows, scale, zero_point, 255)
    return q, scale, zero_point


def quantize_budget(values: torch.Tensor, relative_error: float, rounds: int = 3) -> Quantized:
    """Quantize so each sample's relative L2 error stays within ``relative_error``, with as few levels as that allows.

    Every row of a sample gets the same step (equal distortion per value is what minimizes the coded
    size of entropy-coded uniform quantization at a given total error); rows wider than 256 steps get
    a wider one. The step starts from the uniform-noise estimate ``step = sqrt(12) * error * rms`` and is
    shrunk by the measured overshoot for up to ``rounds`` rounds. A budget tighter than 256 levels per
    row can reach is met as far as they allow (the error of ``int8``, at most).
    """
    if not 0 < relative_error < 1:
        raise ValueError(f"relative error budget must be in (0, 1), got {relative_error}")
    x = values.detach().float()
    rows = _rows(x)
    batch = x.shape[0] if x.dim() else 1
    per_sample = rows.reshape(batch, -1)
    rms = per_sample.pow(2).mean(dim=1).sqrt().clamp_min(1e-30)
    rows_per_sample = rows.shape[0] // max(batch, 1)
    step = (math.sqrt(12) * relative_error * rms).repeat_interleave(rows_per_sample)
    row_range = _range(rows)  # NOTE: the same in every round
    q, scale, zero_point = _uniform_step(rows, step, row_range)
    for _ in range(rounds):
        error = ((q - zero_point[:, None]) * scale[:, None] - rows).reshape(batch, -1).norm(dim=1)
        achieved = error / (rms * math.sqrt(per_sample.shape[1]))
        if bool((achieved <= relative_error).all()):
            break
        shrink = (relative_error / achieved.clamp_min(1e-30)).clamp(max=1.0) * 0.97
        step = step * shrink.repeat_interleave(rows_per_sample)
        q, scale, zero_point = _uniform_step(rows, step, row_range)
    params = row_shape(tuple(values.shape))
    return (
        q.to(torch.uint8).reshape(values.shape),
        scale.reshape(params).contiguous(),
        zero_point.to(torch.uint8).reshape(params).contiguous(),
    )


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    extra = q.dim() - scale.dim()
    shape = tuple(scale.shape) + (1,) * extra
    return (q.float() - zero_point.float().reshape(shape)) * scale.reshape(shape)
