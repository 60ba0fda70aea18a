"""The spatial transform behind the ``dctN`` codecs: an orthonormal 2-D DCT-II of every channel map.

A tensor of rank 4 (``N, C, H, W``) is transformed over its last two dimensions, each ``H x W`` map
independently: ``Y = D_H X D_W^T`` with ``D_n[k, i] = sqrt(2 / n) cos(pi (2 i + 1) k / (2 n))`` (row
``k = 0`` scaled by ``1 / sqrt(2)``), computed in float32 on both sides. The transform is orthonormal,
so an error in the coefficients is the same L2 error in the activations. Tensors of any other rank
are left as they are.

Coefficients are grouped into frequency *bands* by ``u + v`` (row and column frequency index):
band 0 is the DC term, band 1 ``u + v`` in 1-2, band 2 in 3-6, band 3 the rest. Each band gets its own
entropy model (their statistics differ by an order of magnitude), see :mod:`shared.codecs`.
"""

from __future__ import annotations

import functools
import math

import torch

__all__ = ["BANDS", "band_index", "dct2", "idct2", "transformable"]

BANDS = 4
_BAND_EDGES = (0, 2, 6)  # the largest u + v of bands 0, 1, 2


def transformable(shape: tuple[int, ...]) -> bool:
    """Whether tensors of ``shape`` are transformed (rank 4: batch, channels, height, width)."""
    return len(shape) == 4


@functools.lru_cache(maxsize=32)  # NOTE: one per map size; read, never written (only matmul uses it)
def _matrix(n: int) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    matrix = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    matrix[0] /= math.sqrt(2)
    return matrix.float()


def dct2(values: torch.Tensor) -> torch.Tensor:
    """The orthonormal 2-D DCT of every ``H x W`` map of a rank-4 float32 tensor."""
    rows, cols = _matrix(values.shape[-2]), _matrix(values.shape[-1])
    return torch.matmul(torch.matmul(rows, values), cols.T)


def idct2(coefficients: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`dct2`."""
    rows, cols = _matrix(coefficients.shape[-2]), _matrix(coefficients.shape[-1])
    return torch.matmul(torch.matmul(rows.T, coefficients), cols)


def band_index(height: int, width: int) -> torch.Tensor:
    """The band (0 .. ``BANDS - 1``) of every coefficient of an ``height x width`` map (int64)."""
    total = torch.arange(height)[:, None] + torch.arange(width)[None, :]
    band = torch.full((height, width), BANDS - 1, dtype=torch.int64)
    for index, edge in reversed(list(enumerate(_BAND_EDGES))):
        band = torch.where(total <= edge, torch.full_like(band, index), band)
    return band
