"""The model's evaluation transform with Pillow and numpy: what :class:`shared.preprocessing.ImagePreprocessor`
computes with torchvision, to the bit (resize the shorter side with Pillow's antialiased filter, center-crop,
scale to 0-1, normalize, all in float32 in the same order).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from shared.errors import PayloadTooLarge

__all__ = ["NumpyPreprocessor"]

_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class NumpyPreprocessor:
    crop_size: int
    resize_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    max_pixels: int = 40_000_000
    pixel_scale: float = 1.0
    """Pixels in 0-1 (1) or 0-255 (255) before normalizing, as ``ImagePreprocessor.pixel_scale``."""

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], max_pixels: int = 40_000_000) -> NumpyPreprocessor:
        """From a manifest's ``preprocessing`` (``ImagePreprocessor.to_json()``)."""
        interpolation = str(raw.get("interpolation", "bilinear"))
        if interpolation not in _FILTERS:
            raise ValueError(f"interpolation {interpolation!r} is not supported; expected one of {sorted(_FILTERS)}")
        crop, resize = int(raw["crop_size"]), int(raw["resize_size"])
        if not 0 < crop <= resize:
            raise ValueError(f"crop size {crop} must be positive and at most the resize size {resize}")
        return cls(
            crop_size=crop,
            resize_size=resize,
            mean=tuple(float(m) for m in raw["mean"]),
            std=tuple(float(s) for s in raw["std"]),
            interpolation=interpolation,
            max_pixels=max_pixels,
            pixel_scale=float(raw.get("pixel_scale", 1.0)),
        )

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """torchvision's ``_compute_resized_output_size`` for a single requested size: ``(width, height)``."""
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.resize_size, int(self.resize_size * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def crop(self, image: Image.Image) -> Image.Image:
        width, height = self.resized_size(*image.size)
        if width * height > self.max_pixels:
            raise PayloadTooLarge(
                f"a {image.size[0]}x{image.size[1]} image would be resized to {width}x{height} pixels; "
                f"the limit is {self.max_pixels}"
            )
        if (width, height) != image.size:
            image = image.resize((width, height), _FILTERS[self.interpolation])
        top = round((height - self.crop_size) / 2.0)
        left = round((width - self.crop_size) / 2.0)
        return image.crop((left, top, left + self.crop_size, top + self.crop_size))

    def finish(self, image: Image.Image) -> np.ndarray:
        pixels = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255)
        if self.pixel_scale != 1.0:  # NOTE: the same operations in the same order as the torch path
            pixels = pixels * np.float32(self.pixel_scale)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(-1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(-1, 1, 1)
        normalized: np.ndarray = (pixels - mean) / std
        return normalized

    def batch(self, images: Sequence[Image.Image]) -> np.ndarray:
        return np.stack([self.finish(self.crop(image)) for image in images])
