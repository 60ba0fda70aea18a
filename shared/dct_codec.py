"""The ``dctN`` activation codec: spatial transform coding with an error budget (layout version 1).

Encoding a float tensor ``T`` of ``N`` samples:

1. every ``H x W`` map of a rank-4 tensor becomes its orthonormal 2-D DCT (:mod:`shared.transform`;
   tensors of other ranks are coded as they are, all in band 0);
2. each sample gets one quantization step, ``T.step`` (F32 ``[N]``): coefficients become integers
   ``q = round(y / step)`` in ``[-LIMIT, LIMIT]``. The step starts at ``sqrt(12) * budget * rms`` and
   shrinks by the measured overshoot (up to 3 rounds) until the sample's relative L2 error is within
   the budget (N per mille); the transform is orthonormal, so that is the activations' error;
3. the integers are coded with rANS (``constriction``) under a zero-mean Laplace model whose scale is
   ``s = T.bands[n, band] * 2 ** ((T.spread[n, c] - 128) / 16)``, floored at ``MIN_SCALE``:
   ``T.bands`` (F32 ``[N, 4]``) is the mean ``|q|`` of each frequency band of the sample, ``T.spread``
   (U8 ``[N, C]``, rank >= 3; ``[N, 1]`` otherwise) each channel's mean ``|q| / bands`` on a
   1/16-octave log scale. Band 0 (the DC terms, one per map) is coded first, with the quantized
   Laplace of scale ``s`` on ``[-LIMIT, LIMIT]``. The other bands' coefficients are clamped to
   ``[-AC_LIMIT, AC_LIMIT]`` and coded by *class*: class ``k = clip(round(2 log2 s) + 12, 0, 31)``
   uses a categorical table over ``[-AC_LIMIT, AC_LIMIT]``, the Laplace of scale ``2 ** ((k - 12) / 2)``
   (probabilities ``+ 1e-9``, float64 on both sides), classes in increasing order, each class's symbols
   in C order of ``(n, c, band, position)``. ``T`` is the stream (U8, 1-D, a multiple of 4 bytes).

The decoder checks every parameter (finite, positive steps and scales; a bounded stream) before it
decodes exactly the number of symbols the declared shape has; the model's range bounds every symbol.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from shared.entropy import max_stream_bytes
from shared.errors import InvalidTensor, MalformedPayload
from shared.transform import BANDS, band_index, dct2, idct2, transformable

__all__ = ["AC_LIMIT", "LIMIT", "MIN_SCALE", "dct_components", "dct_decode", "dct_encode"]

LIMIT = 32767
AC_LIMIT = 1023
MIN_SCALE = 0.02
_CLASSES = 32
_ROUNDS = 3


def _layout(shape: tuple[int, ...]) -> tuple[int, int, int, torch.Tensor]:
    """``(samples, channels, positions, band of each position)`` of a tensor of ``shape``."""
    return _layout_of(tuple(shape))


@functools.lru_cache(maxsize=64)  # NOTE: the band tensor is read, never written
def _layout_of(shape: tuple[int, ...]) -> tuple[int, int, int, torch.Tensor]:
    samples = shape[0] if shape else 1
    if transformable(shape):
        return samples, shape[1], shape[2] * shape[3], band_index(shape[2], shape[3]).reshape(-1)
    channels = shape[1] if len(shape) >= 3 else 1
    positions = math.prod(shape) // max(samples * channels, 1)
    return samples, channels, positions, torch.zeros(positions, dtype=torch.int64)


@dataclass(frozen=True)
class _MapLayout:
    """What depends only on the shape of one row's positions: computed once per shape (the encoder and the
    decoder of a cut see the same shape on every request). Nothing here is ever written to."""

    band_of: torch.Tensor  # the band of every position, in the tensor's order
    order: torch.Tensor  # the positions in stream (band-major, stable) order
    sorted_bands: np.ndarray  # the band of every position in stream order
    sorted_bands_tensor: torch.Tensor  # the same, as a tensor
    band_slices: tuple[tuple[int, int], ...]  # each band's positions in stream order: [start, end)
    dc_row: np.ndarray  # which positions of a row are DC terms, in stream order


def _map_layout(shape: tuple[int, ...]) -> _MapLayout:
    return _map_layout_of(tuple(shape))


@functools.lru_cache(maxsize=64)
def _map_layout_of(shape: tuple[int, ...]) -> _MapLayout:
    _, _, _, band_of = _layout(shape)
    order = torch.argsort(band_of, stable=True)
    sorted_bands = torch.sort(band_of).values
    edges = torch.searchsorted(sorted_bands, torch.arange(BANDS + 1)).tolist()
    sorted_np = sorted_bands.numpy().copy()
    dc_row = (sorted_np == 0) & transformable(shape)
    for array in (sorted_np, dc_row):
        array.flags.writeable = False
    slices = tuple((edges[b], edges[b + 1]) for b in range(BANDS))
    return _MapLayout(band_of, order, sorted_np, sorted_bands, slices, dc_row)


def _dc_mask(samples: int, channels: int, layout: _MapLayout) -> np.ndarray:
    """Which symbols (in stream order) are DC terms: band 0 of a transformed tensor."""
    return np.tile(layout.dc_row, samples * channels)


def dct_components(shape: tuple[int, ...]) -> dict[str, tuple[torch.dtype, tuple[int | None, ...]]]:
    samples, channels, _, _ = _layout(shape)
    return {
        "": (torch.uint8, (None,)),
        ".step": (torch.float32, (samples,)),
        ".bands": (torch.float32, (samples, BANDS)),
        ".spread": (torch.uint8, (samples, channels)),
    }


def _band_scales(bands: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """The Laplace scale (float64) of the symbols of every sample, channel and band, ``[N, C, BANDS]`` (every
    symbol's scale is its band's: computed per band, not per symbol)."""
    channel = np.exp2((spread.astype(np.float64) - 128.0) / 16.0)  # N, C
    per_band = bands.astype(np.float64)[:, None, :] * channel[:, :, None]  # N, C, BANDS
    scales: np.ndarray = np.maximum(per_band, MIN_SCALE)
    return scales


def _classes(scales: np.ndarray) -> np.ndarray:
    classes: np.ndarray = np.clip(np.round(2 * np.log2(scales)) + 12, 0, _CLASSES - 1).astype(np.int64)
    return classes


@functools.lru_cache(maxsize=_CLASSES)  # NOTE: 32 constant tables; building one costs about a millisecond
def _class_model(k: int) -> object:
    import constriction

    support = np.arange(-AC_LIMIT, AC_LIMIT + 1, dtype=np.float64)
    scale = 2.0 ** ((k - 12) / 2)
    probabilities = np.exp(-np.abs(support) / scale) + 1e-9
    return constriction.stream.model.Categorical(probabilities / probabilities.sum(), perfect=False)


def _split(
    band_scales: np.ndarray, layout: _MapLayout, samples: int, channels: int
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """The stream's groups: the positions of the DC symbols and their scales, then the positions of every
    class, each in increasing order (one stable sort by group instead of a scan per class)."""
    classes = _classes(band_scales)[:, :, layout.sorted_bands].reshape(-1)  # NOTE: a class per band, spread out
    dc = _dc_mask(samples, channels, layout)
    group = (np.where(dc, -1, classes) + 1).astype(np.uint8)  # NOTE: 0 is DC, 1 + k class k
    by_group = np.argsort(group, kind="stable")  # NOTE: a radix sort for 8-bit keys
    ends = np.cumsum(np.bincount(group, minlength=_CLASSES + 1)).tolist()
    starts = [0, *ends[:-1]]
    parts = [by_group[start:end] for start, end in zip(starts, ends, strict=True)]
    # NOTE: every DC term is in band 0; rows come in order, each with the same DC positions
    dc_scales = np.repeat(band_scales[:, :, 0].reshape(-1), int(layout.dc_row.sum()))
    return parts[0], dc_scales, parts[1:]


def dct_encode(tensor: torch.Tensor, relative_error: float) -> dict[str, torch.Tensor]:
    import constriction

    if not 0 < relative_error < 1:
        raise ValueError(f"relative error budget must be in (0, 1), got {relative_error}")
    shape = tuple(tensor.shape)
    samples, channels, positions, _ = _layout(shape)
    layout = _map_layout(shape)
    values = tensor.detach().float()
    coefficients = dct2(values) if transformable(shape) else values
    y = coefficients.reshape(samples, channels, positions)[:, :, layout.order]
    norm = values.reshape(samples, -1).norm(dim=1).clamp_min(1e-30)
    count = max(channels * positions, 1)
    step = math.sqrt(12) * relative_error * norm / math.sqrt(count)
    for _ in range(_ROUNDS + 1):
        q = torch.clamp(torch.round(y / step[:, None, None]), -LIMIT, LIMIT)
        achieved = (q * step[:, None, None] - y).reshape(samples, -1).norm(dim=1) / norm
        if bool((achieved <= relative_error).all()):
            break
        step = step * (relative_error / achieved.clamp_min(1e-30)).clamp(max=1.0) * 0.97
    step = torch.where(step > 0, step, torch.ones_like(step))
    magnitude = q.abs().double()
    # NOTE: each band's positions are one slice in stream order; made contiguous, it is the very tensor a
    # boolean mask would select, so the mean (and the payload) is bit for bit the same
    bands = torch.stack(
        [
            magnitude[:, :, start:end].contiguous().mean(dim=(1, 2)) if end > start else
            torch.zeros(samples, dtype=torch.float64)
            for start, end in layout.band_slices
        ],
        dim=1,
    ).clamp_min(MIN_SCALE).float()  # fmt: skip
    relative = magnitude / bands.double()[:, None, :][:, :, layout.sorted_bands_tensor]
    ratio = relative.mean(dim=2).clamp_min(1e-6) if positions else torch.ones(samples, channels, dtype=torch.float64)
    spread = torch.clamp(torch.round(torch.log2(ratio) * 16 + 128), 0, 255).to(torch.uint8)
    symbols = q.to(torch.int32).numpy().reshape(-1)
    dc_index, dc_scales, groups = _split(_band_scales(bands.numpy(), spread.numpy()), layout, samples, channels)
    ac_symbols = np.clip(symbols, -AC_LIMIT, AC_LIMIT) + AC_LIMIT
    coder = constriction.stream.stack.AnsCoder()
    for k in reversed(range(_CLASSES)):
        if groups[k].size:
            coder.encode_reverse(ac_symbols[groups[k]], _class_model(k))
    if dc_index.size:
        laplace = constriction.stream.model.QuantizedLaplace(-LIMIT, LIMIT)
        coder.encode_reverse(symbols[dc_index], laplace, np.zeros(dc_index.size), dc_scales)
    words = coder.get_compressed().astype("<u4")
    return {
        "": torch.from_numpy(words.view(np.uint8).copy()),
        ".step": step.float().contiguous(),
        ".bands": bands.contiguous(),
        ".spread": spread.contiguous(),
    }


def dct_decode(parts: Mapping[str, torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    import constriction

    samples, channels, positions, _ = _layout(shape)
    layout = _map_layout(shape)
    step, bands, spread, stream = parts[".step"], parts[".bands"], parts[".spread"], parts[""]
    for name, values in ((".step", step), (".bands", bands)):
        if not bool(torch.isfinite(values).all()) or not bool((values > 0).all()):
            raise InvalidTensor(f"dct {name} must be finite and positive")
    count = samples * channels * positions
    size = int(stream.numel())
    if size % 4 or size > max_stream_bytes(count):
        raise MalformedPayload(
            f"dct stream of {size} bytes for {count} symbols (whole 32-bit words, at most {max_stream_bytes(count)})"
        )
    q = np.zeros(count, dtype=np.int32)
    if count:
        dc_index, dc_scales, groups = _split(_band_scales(bands.numpy(), spread.numpy()), layout, samples, channels)
        words = stream.numpy().view("<u4").astype(np.uint32)
        try:
            coder = constriction.stream.stack.AnsCoder(words)
            if dc_index.size:
                laplace = constriction.stream.model.QuantizedLaplace(-LIMIT, LIMIT)
                q[dc_index] = coder.decode(laplace, np.zeros(dc_index.size), dc_scales)
            for k in range(_CLASSES):
                if groups[k].size:
                    q[groups[k]] = np.asarray(coder.decode(_class_model(k), groups[k].size)) - AC_LIMIT
        except (ValueError, RuntimeError, AssertionError) as exc:
            raise MalformedPayload(f"dct stream cannot be decoded: {exc}") from exc
    ordered = torch.from_numpy(q).reshape(samples, channels, positions).float() * step[:, None, None]
    coefficients = torch.empty_like(ordered)
    coefficients[:, :, layout.order] = ordered
    coefficients = coefficients.reshape(shape)
    return idct2(coefficients) if transformable(shape) else coefficients
