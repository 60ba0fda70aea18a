"""Image decoding with limits, and the model's own evaluation transform split in two halves.

torchvision's ``ImageClassification`` transform resizes and center-crops the PIL image, then converts
it to a normalized float tensor. :class:`ImagePreprocessor` exposes the two halves separately so the
edge can ship the cropped image (``png``/``jpeg``/``uint8`` codecs of the ``input`` cut) and the cloud
can finish it, with results equal to running the whole transform in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
    """The parameters of torchvision's ``ImageClassification`` transform, applied in two steps."""

    crop_size: int = 224
    resize_size: int = 256
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: InterpolationMode = InterpolationMode.BILINEAR
    antialias: bool = True

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
        }


def _first(value: int | Sequence[int]) -> int:
    return value if isinstance(value, int) else value[0]
