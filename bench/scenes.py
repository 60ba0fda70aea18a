"""Generated high-resolution scenes with natural-image statistics: a "dead leaves" picture (occluding
discs and ellipses whose radii follow r^-3, so the picture looks alike at every scale) over a 1/f^2
background, each leaf textured with 1/f noise and a shading gradient, then a slight blur (a lens).

Camera-sized photos cannot be downloaded here and the packaged sample photos are at most 1.4 megapixels;
these stand in for the high frequencies of a real 12-megapixel photo (which an upscaled small photo lacks).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

__all__ = ["dead_leaves"]


def _pink_noise(rng: np.random.Generator, height: int, width: int, exponent: float) -> np.ndarray:
    """Zero-mean, unit-variance noise whose power falls as 1/f^exponent."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    frequency = np.sqrt(fx**2 + fy**2)
    frequency[0, 0] = 1.0
    spectrum = (rng.normal(size=frequency.shape) + 1j * rng.normal(size=frequency.shape)) / frequency ** (exponent / 2)
    spectrum[0, 0] = 0
    field = np.fft.irfft2(spectrum, s=(height, width))
    return ((field - field.mean()) / (field.std() + 1e-9)).astype(np.float32)


def dead_leaves(width: int, height: int, seed: int, leaves: int = 1500) -> Image.Image:
    """One scene, deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.2, 0.8, 3)
    canvas = np.stack([np.clip(base[c] + 0.15 * _pink_noise(rng, height, width, 2.0), 0, 1) for c in range(3)], -1)
    textures = (_pink_noise(rng, height, width, 2.0), _pink_noise(rng, height, width, 1.2))
    r_min, r_max = 4.0 * width / 640, 0.4 * min(width, height)
    for _ in range(leaves):
        # NOTE: inverse-CDF sampling of p(r) ~ r^-3 between r_min and r_max.
        r = 1 / np.sqrt(1 / r_min**2 - rng.random() * (1 / r_min**2 - 1 / r_max**2))
        cx, cy = rng.uniform(-r, width + r), rng.uniform(-r, height + r)
        x0, x1 = int(max(0, cx - r)), int(min(width, cx + r + 1))
        y0, y1 = int(max(0, cy - r)), int(min(height, cy + r + 1))
        if x0 >= x1 or y0 >= y1:
            continue
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dx, dy = xs - cx, ys - cy
        angle, elongation = rng.uniform(0, np.pi), rng.uniform(0.3, 1.0)
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        mask = (u / r) ** 2 + (v / (r * elongation)) ** 2 < 1
        if not mask.any():
            continue
        colour = np.clip(rng.beta(2, 2) + rng.normal(0, 0.12, size=3), 0, 1)
        texture = textures[int(rng.integers(2))][y0:y1, x0:x1]
        shading = (dx * rng.normal(0, 0.3) + dy * rng.normal(0, 0.3)) / max(r, 1.0)
        detail = (rng.uniform(0.0, 0.25) * texture + 0.3 * shading)[..., None] * (0.7 + 0.3 * rng.random(3))
        region = canvas[y0:y1, x0:x1]
        region[mask] = (colour + detail)[mask]
    pixels = (np.clip(canvas, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB").filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.0)))
