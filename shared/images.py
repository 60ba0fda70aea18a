"""Decoding untrusted image bytes with limits (Pillow only: the torch-free edge uses it as it is)."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from shared.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType

__all__ = ["DEFAULT_FORMATS", "ImageLimits", "decode_image"]

DEFAULT_FORMATS = ("JPEG", "PNG", "WEBP")


@dataclass(frozen=True)
class ImageLimits:
    """What an image received from the network may be."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    formats: tuple[str, ...] = DEFAULT_FORMATS


def decode_image(data: bytes, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Decode untrusted image bytes into an RGB PIL image, refusing bombs and unknown formats."""
    if not data:
        raise InvalidImage("the image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(f"the image is {len(data)} bytes; the limit is {limits.max_bytes}")
    with warnings.catch_warnings():
        # NOTE: PIL warns (DecompressionBombWarning) before our own, stricter pixel check runs.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=list(limits.formats))
        except UnidentifiedImageError as exc:
            raise UnsupportedMediaType(f"not an image in an accepted format ({', '.join(limits.formats)})") from exc
        except Image.DecompressionBombError as exc:
            raise PayloadTooLarge(f"image refused as a decompression bomb: {exc}") from exc
        width, height = image.size
        if width <= 0 or height <= 0:
            raise InvalidImage(f"the image is {width}x{height} pixels")
        if width * height > limits.max_pixels:
            raise PayloadTooLarge(
                f"the image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}"
            )
        try:
            image.load()
            return image.convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise InvalidImage(f"the {image.format} image cannot be decoded: {exc}") from exc
