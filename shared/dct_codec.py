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
    samples = shape[0] if shape else 1
    if transformable(shape):
        return samples, shape[1], shape[2] * shape[3], band_index(shape[2], shape[3]).reshape(-1)
    channels = shape[1] if len(shape) >= 3 else 1
    positions = math.prod(shape) // max(samples * channels, 1)
    return samples, channels, positions, torch.zeros(positions, dtype=torch.int64)


def _dc_mask(samples: int, channels: int, band_of: torch.Tensor, transformed: bool) -> np.ndarray:
    """Which symbols (in stream order) are DC terms: band 0 of a transformed tensor."""
    per_row = (torch.sort(band_of).values == 0).numpy() & transformed
    return np.tile(per_row, samples * channels)


def dct_components(shape: tuple[int, ...]) -> dict[str, tuple[torch.dtype, tuple[int | None, ...]]]:
    samples, channels, _, _ = _layout(shape)
    return {
        "": (torch.uint8, (None,)),
        ".step": (torch.float32, (samples,)),
        ".bands": (torch.float32, (samples, BANDS)),
        ".spread": (torch.uint8, (samples, channels)),
    }


def _model_scales(bands: np.ndarray, spread: np.ndarray, band_of: np.ndarray) -> np.ndarray:
    """The Laplace scale (float64) of every symbol, ``[N, C, P]``, in the band-major order of the stream."""
    channel = np.exp2((spread.astype(np.float64) - 128.0) / 16.0)  # N, C
    per_band = bands.astype(np.float64)[:, None, :] * channel[:, :, None]  # N, C, BANDS
    scales: np.ndarray = np.maximum(per_band[:, :, np.sort(band_of)], MIN_SCALE)
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


def _split(symbols: np.ndarray, scales: np.ndarray, dc: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """The stream's groups: the positions of the DC symbols, then those of every used class."""
    ac_classes = np.where(dc, -1, _classes(scales))
    return np.flatnonzero(dc), [np.flatnonzero(ac_classes == k) for k in range(_CLASSES)]


def _order(band_of: torch.Tensor) -> torch.Tensor:
    return torch.argsort(band_of, stable=True)


def dct_encode(tensor: torch.Tensor, relative_error: float) -> dict[str, torch.Tensor]:
    import constriction

    if not 0 < relative_error < 1:
        raise ValueError(f"relative error budget must be in (0, 1), got {relative_error}")
    shape = tuple(tensor.shape)
    samples, channels, positions, band_of = _layout(shape)
    values = tensor.detach().float()
    coefficients = dct2(values) if transformable(shape) else values
    y = coefficients.reshape(samples, channels, positions)[:, :, _order(band_of)]
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
    sorted_bands = torch.sort(band_of).values
    magnitude = q.abs().double()
    bands = torch.stack(
        [
            magnitude[:, :, sorted_bands == b].mean(dim=(1, 2)) if bool((sorted_bands == b).any()) else
            torch.zeros(samples, dtype=torch.float64)
            for b in range(BANDS)
        ],
        dim=1,
    ).clamp_min(MIN_SCALE).float()  # fmt: skip
    relative = magnitude / bands.double()[:, None, :][:, :, sorted_bands]
    ratio = relative.mean(dim=2).clamp_min(1e-6) if positions else torch.ones(samples, channels, dtype=torch.float64)
    spread = torch.clamp(torch.round(torch.log2(ratio) * 16 + 128), 0, 255).to(torch.uint8)
    symbols = q.to(torch.int32).numpy().reshape(-1)
    scales = _model_scales(bands.numpy(), spread.numpy(), band_of.numpy()).reshape(-1)
    dc = _dc_mask(samples, channels, band_of, transformable(shape))
    dc_index, groups = _split(symbols, scales, dc)
    coder = constriction.stream.stack.AnsCoder()
    for k in reversed(range(_CLASSES)):
        if groups[k].size:
            coder.encode_reverse(np.clip(symbols[groups[k]], -AC_LIMIT, AC_LIMIT) + AC_LIMIT, _class_model(k))
    if dc_index.size:
        laplace = constriction.stream.model.QuantizedLaplace(-LIMIT, LIMIT)
        coder.encode_reverse(symbols[dc_index], laplace, np.zeros(dc_index.size), scales[dc_index])
    words = coder.get_compressed().astype("<u4")
    return {
        "": torch.from_numpy(words.view(np.uint8).copy()),
        ".step": step.float().contiguous(),
        ".bands": bands.contiguous(),
        ".spread": spread.contiguous(),
    }


def dct_decode(parts: Mapping[str, torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    import constriction

    samples, channels, positions, band_of = _layout(shape)
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
        scales = _model_scales(bands.numpy(), spread.numpy(), band_of.numpy()).reshape(-1)
        dc = _dc_mask(samples, channels, band_of, transformable(shape))
        dc_index, groups = _split(q, scales, dc)
        words = stream.numpy().view("<u4").astype(np.uint32)
        try:
            coder = constriction.stream.stack.AnsCoder(words)
            if dc_index.size:
                laplace = constriction.stream.model.QuantizedLaplace(-LIMIT, LIMIT)
                q[dc_index] = coder.decode(laplace, np.zeros(dc_index.size), scales[dc_index])
            for k in range(_CLASSES):
                if groups[k].size:
                    q[groups[k]] = np.asarray(coder.decode(_class_model(k), groups[k].size)) - AC_LIMIT
        except (ValueError, RuntimeError, AssertionError) as exc:
            raise MalformedPayload(f"dct stream cannot be decoded: {exc}") from exc
    ordered = torch.from_numpy(q).reshape(samples, channels, positions).float() * step[:, None, None]
    coefficients = torch.empty_like(ordered)
    coefficients[:, :, _order(band_of)] = ordered
    coefficients = coefficients.reshape(shape)
    return idct2(coefficients) if transformable(shape) else coefficients
