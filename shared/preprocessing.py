"""Image decoding with limits, and the model's own evaluation transform split in two halves.

torchvision's ``ImageClassification`` transform resizes and center-crops the PIL image, then converts
it to a normalized float tensor. :class:`ImagePreprocessor` exposes the two halves separately so the
edge can ship the cropped image (``png``/``jpeg``/``uint8`` codecs of the ``input`` cut) and the cloud
can finish it, with results equal to running the whole transform in one place.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from shared.images import DEFAULT_FORMATS, ImageLimits, check_resize, decode_image, decode_images, resized_size

__all__ = [
    "DEFAULT_FORMATS",
    "ImageLimits",
    "ImagePreprocessor",
    "check_resize",
    "decode_image",
    "decode_images",
    "resized_size",
]


@dataclass(frozen=True)
class ImagePreprocessor:
    """The parameters of torchvision's ``ImageClassification`` transform, applied in two steps.

    Resize the shorter side to ``resize_size`` with ``interpolation``, center-crop ``crop_size`` (the
    model's square input size), scale pixels to ``[0, pixel_scale]`` (1 for torchvision and timm
    models, 255 for TF-style models such as EfficientNet-Lite) and normalize with ``mean`` and ``std``
    (in the same scale).
    """

    crop_size: int = 224
    resize_size: int = 256
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: InterpolationMode = InterpolationMode.BILINEAR
    antialias: bool = True
    pixel_scale: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.crop_size <= 4096 or not 1 <= self.resize_size <= 8192:
            raise ValueError(f"crop size {self.crop_size} and resize size {self.resize_size} must be 1..4096/8192")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ValueError(f"mean {self.mean} and std {self.std} need 3 values each, std positive")
        if self.pixel_scale not in (1.0, 255.0):
            raise ValueError(f"pixel scale {self.pixel_scale} is neither 1 (pixels in 0-1) nor 255 (0-255)")

    @classmethod
    def from_timm(cls, config: Mapping[str, Any]) -> ImagePreprocessor:
        """From ``timm.data.resolve_data_config(...)`` (``input_size``, ``crop_pct``, ``interpolation``...)."""
        size = int(config["input_size"][-1])
        crop_pct = float(config.get("crop_pct") or 1.0)
        return cls(
            crop_size=size,
            resize_size=math.floor(size / crop_pct),
            mean=tuple(float(m) for m in config["mean"]),
            std=tuple(float(s) for s in config["std"]),
            interpolation=InterpolationMode(str(config.get("interpolation", "bilinear"))),
        )

    def with_overrides(self, overrides: Mapping[str, Any]) -> ImagePreprocessor:
        """A copy with some parameters replaced (``interpolation`` may be a name such as ``bicubic``).

        Changing the input size alone keeps the resize-to-crop ratio.
        """
        changes = {k: v for k, v in overrides.items() if v is not None}
        if isinstance(changes.get("interpolation"), str):
            changes["interpolation"] = InterpolationMode(changes["interpolation"].lower())
        for key in ("mean", "std"):
            if key in changes:
                changes[key] = tuple(float(v) for v in changes[key])
        if "crop_size" in changes and "resize_size" not in changes:
            changes["resize_size"] = round(changes["crop_size"] * self.resize_size / self.crop_size)
        return replace(self, **changes)

    @classmethod
    def from_transform(cls, transform: Any | None) -> ImagePreprocessor:
        """From a torchvision ``weights.transforms()`` object (``None``: the ImageNet defaults)."""
        if transform is None:
            return cls()
        return cls(
            crop_size=int(_first(transform.crop_size)),
            resize_size=int(_first(transform.resize_size)),
            mean=tuple(float(m) for m in transform.mean),
            std=tuple(float(s) for s in transform.std),
            interpolation=transform.interpolation,
            antialias=bool(transform.antialias),
        )

    def crop(self, image: Image.Image) -> Image.Image:
        """Resize and center-crop (the part of the transform that works on the PIL image)."""
        check_resize(*image.size, self.resize_size, ImageLimits.max_pixels)  # NOTE: callers check their own limit first
        resized = F.resize(image, [self.resize_size], interpolation=self.interpolation, antialias=self.antialias)
        cropped: Image.Image = F.center_crop(resized, [self.crop_size])
        return cropped

    def finish(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        """A cropped image (PIL, or a ``uint8`` CHW tensor) to the normalized float CHW tensor."""
        tensor = F.pil_to_tensor(image) if isinstance(image, Image.Image) else image
        tensor = F.convert_image_dtype(tensor, torch.float)
        if self.pixel_scale != 1.0:
            tensor = tensor * self.pixel_scale
        normalized: torch.Tensor = F.normalize(tensor, mean=list(self.mean), std=list(self.std))
        return normalized

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.finish(self.crop(image))

    def batch(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self(image) for image in images])

    def to_json(self) -> dict[str, Any]:
        return {
            "crop_size": self.crop_size,
            "resize_size": self.resize_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation.value,
            "antialias": self.antialias,
            "pixel_scale": self.pixel_scale,
        }


def _first(value: int | Sequence[int]) -> int:
    return value if isinstance(value, int) else value[0]
