"""Deterministic synthetic images for the demo, the codec report, profiles and the tests (nothing is downloaded)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

__all__ = ["encode_image", "generated_jpegs", "synthetic_image"]


def synthetic_image(width: int = 320, height: int = 240, seed: int = 0) -> Image.Image:
    """A smooth photo-like RGB image: colour gradients plus a few solid discs, deterministic per seed."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(0.005, 0.05), rng.uniform(0.005, 0.05), rng.uniform(0, 6.28)
        channels.append(0.5 + 0.5 * np.sin(xs * fx + ys * fy + phase))
    picture = np.stack(channels, axis=-1)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(10, 60)
        mask = ((xs - cx) ** 2 + (ys - cy) ** 2) < r**2
        picture[mask] = rng.uniform(0, 1, size=3)
    return Image.fromarray((picture * 255).astype(np.uint8), "RGB")


def encode_image(image: Image.Image, fmt: str = "JPEG", quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    if fmt.upper() == "JPEG":
        image.save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format=fmt)
    return buffer.getvalue()


def generated_jpegs(count: int, width: int = 640, height: int = 480) -> list[bytes]:
    """``count`` synthetic pictures (seeds 0, 1, ...) as JPEGs (q=90): what a profile or a benchmark measures
    on when it is given no images."""
    return [encode_image(synthetic_image(width, height, seed=seed)) for seed in range(count)]
