"""Images that attack or trip up an image decoder, and photo variants that must classify alike."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, PngImagePlugin

__all__ = ["png", "png_bytes_of_size", "photo_variants", "text_chunk_bomb", "icc_chunk_bomb"]


def png(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def png_bytes_of_size(width: int, height: int) -> bytes:
    """A tiny (compressed) greyscale PNG of any size, written by hand (PIL would allocate the pixels)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte 0, then black pixels
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def text_chunk_bomb() -> bytes:
    """A small PNG whose compressed text chunk inflates past PIL's MAX_TEXT_CHUNK (before the image data)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "a" * (PngImagePlugin.MAX_TEXT_CHUNK + 10), zip=True)
    return png(Image.new("RGB", (8, 8)), pnginfo=info)


def icc_chunk_bomb() -> bytes:
    """A small PNG whose compressed ICC profile inflates past PIL's MAX_TEXT_CHUNK."""
    return png(Image.new("RGB", (8, 8)), icc_profile=b"\0" * (PngImagePlugin.MAX_TEXT_CHUNK + 10))


def _photo() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.chelsea()).resize((300, 200))


def photo_variants() -> dict[str, bytes]:
    """Pairs that must classify alike: upright / EXIF-rotated, 8-bit / 16-bit grey, on white / transparent."""
    upright = _photo()
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    rotated = upright.transpose(Image.Transpose.ROTATE_90)  # stored as a sideways camera would store it
    grey = np.asarray(upright.convert("L"))
    grey16 = Image.fromarray(grey.astype(np.uint16) * 257)
    rgba = np.dstack([np.asarray(upright), np.full(grey.shape, 255, np.uint8)])
    rng = np.random.default_rng(0)
    rgba[:, :150, :3] = rng.integers(0, 256, (200, 150, 3), dtype=np.uint8)  # junk under transparent pixels
    rgba[:, :150, 3] = 0
    on_white = np.asarray(upright).copy()
    on_white[:, :150] = 255
    return {
        "upright": png(upright),
        "exif-rotated": png(rotated, exif=exif),
        "grey8": png(Image.fromarray(grey)),
        "grey16": png(grey16),
        "on-white": png(Image.fromarray(on_white)),
        "transparent": png(Image.fromarray(rgba, mode="RGBA")),
    }
