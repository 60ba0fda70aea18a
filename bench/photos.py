"""Real photos for the compression benchmark: scikit-image's sample photos plus seeded random crops and flips."""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["PHOTO_NAMES", "real_photos"]

PHOTO_NAMES = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
    "retina", "stereo_motorcycle", "camera", "coins", "moon", "brick",
)  # fmt: skip


def _base_photos() -> list[tuple[str, np.ndarray]]:
    import skimage.data

    photos = []
    for name in PHOTO_NAMES:
        image = getattr(skimage.data, name)()
        if name == "stereo_motorcycle":
            photos += [("motorcycle_left", image[0]), ("motorcycle_right", image[1])]
            continue
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        photos.append((name, image[..., :3]))
    return photos


def real_photos(crops_per_photo: int = 4, seed: int = 0) -> list[tuple[str, Image.Image]]:
    """Each sample photo whole, then ``crops_per_photo`` random crops (50-90% of the short side, flipped
    at random), deterministic for ``seed``: 13 photos, 65 images with the defaults."""
    rng = np.random.default_rng(seed)
    images = []
    for name, pixels in _base_photos():
        images.append((name, Image.fromarray(pixels)))
        height, width = pixels.shape[:2]
        for index in range(crops_per_photo):
            side = int(min(height, width) * rng.uniform(0.5, 0.9))
            top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
            crop = pixels[top : top + side, left : left + side]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            images.append((f"{name}/crop{index}", Image.fromarray(np.ascontiguousarray(crop))))
    return images
