"""Large JPEGs are decoded at a reduced scale for the model (``shared.images``, Pillow's ``draft``)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from shared.images import DRAFT_MARGIN, decode_image
from shared.preprocessing import ImagePreprocessor

PRE = ImagePreprocessor()  # NOTE: resize 256, crop 224


def _picture(width: int, height: int, fmt: str = "JPEG", orientation: int | None = None) -> bytes:
    rng = np.random.default_rng(width * 7 + height)
    coarse = rng.integers(0, 256, size=(max(height // 32, 1), max(width // 32, 1), 3), dtype=np.uint8)
    image = Image.fromarray(coarse, "RGB").resize((width, height), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    if orientation is None:
        image.save(buffer, format=fmt)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(buffer, format=fmt, exif=exif.tobytes())
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("size", "decoded"),
    [
        ((4032, 3024), (2016, 1512)),  # NOTE: 1/2: the short side stays >= 1024 (4 x 256)
        ((2048, 2048), (1024, 1024)),
        ((8000, 4200), (2000, 1050)),  # NOTE: 1/4
        ((2047, 3000), (2047, 3000)),  # NOTE: under 8x the resize size on its short side: decoded in full
    ],
)
def test_a_large_jpeg_is_decoded_at_a_reduced_scale_that_keeps_four_times_the_resize_size(
    size: tuple[int, int], decoded: tuple[int, int]
) -> None:
    blob = _picture(*size)
    image = decode_image(blob, resize_size=PRE.resize_size)
    assert image.size == decoded and image.mode == "RGB"
    assert min(image.size) >= min(DRAFT_MARGIN * PRE.resize_size, min(size))
    assert decode_image(blob).size == size  # NOTE: without a resize size: in full
    full, scaled = PRE(decode_image(blob)), PRE(image)
    assert full.shape == scaled.shape == (3, 224, 224)
    # NOTE: what the model sees is nearly the same picture (this one is smooth).
    assert float((full - scaled).norm() / full.norm()) < 0.01


def test_only_jpegs_are_decoded_at_a_reduced_scale_and_orientation_is_kept() -> None:
    png = _picture(4096, 2048, fmt="PNG")
    assert decode_image(png, resize_size=PRE.resize_size).size == (4096, 2048)
    rotated = _picture(4096, 2048, orientation=6)  # NOTE: EXIF "rotate 90 CW": upright it is 2048x4096
    assert decode_image(rotated, resize_size=PRE.resize_size).size == (1024, 2048)
    assert decode_image(rotated).size == (2048, 4096)


def test_a_grayscale_jpeg_stays_grayscale_until_converted() -> None:
    buffer = io.BytesIO()
    Image.new("L", (2048, 2048), 77).save(buffer, format="JPEG")
    image = decode_image(buffer.getvalue(), resize_size=PRE.resize_size)
    assert image.size == (1024, 1024) and image.mode == "RGB"
    assert image.getpixel((10, 10)) == (77, 77, 77)


def test_a_phone_s_multi_picture_jpeg_is_decoded_at_a_reduced_scale_too() -> None:
    """MPO (a JPEG with more pictures after it: an Ultra HDR gain map, a stereo pair) opens as its own format."""
    big = Image.open(io.BytesIO(_picture(4096, 3072)))
    buffer = io.BytesIO()
    big.save(buffer, format="MPO", save_all=True, append_images=[Image.new("RGB", (512, 384))])
    blob = buffer.getvalue()
    assert Image.open(io.BytesIO(blob)).format == "MPO"
    image = decode_image(blob, resize_size=PRE.resize_size)
    assert image.size == (2048, 1536) and image.mode == "RGB"
    assert decode_image(blob).size == (4096, 3072)
    full, scaled = PRE(decode_image(blob)), PRE(image)
    assert float((full - scaled).norm() / full.norm()) < 0.01
