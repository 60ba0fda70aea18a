"""The peak memory of decoding one large image, per pixel, in a fresh process (the growth of its peak RSS).

Pillow holds an RGB image in 4 bytes per pixel, the price the edge's decode budget puts on a decoded pixel
(service_core.image_cost). On the way every mode paid for copies it did not need: the EXIF transpose and
the RGB conversion copied an RGB image that needed neither (6 to 12 bytes per pixel at the peak, as glibc
placed the copies), the alpha composite held an extra RGBA copy and its background past the RGB conversion
(18 to 24), and a 16-bit image was scaled through full-size int64 arrays (15 to 21: a 70 KB PNG of 36
megapixels took 720 MB to decode). Then 4, 12 and 8; an 8-bit grayscale one 5. Now at most 8 in every mode:
the source and its RGB copy, or the RGB copy and its upright copy (shared.images._to_rgb).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from shared.images import ImageLimits, decode_images

ROOT = Path(__file__).resolve().parents[3]

_PROBE = """
import sys
from pathlib import Path
from shared.images import ImageLimits, decode_images
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
blob = Path(sys.argv[1]).read_bytes()
before = status("VmRSS:")
(image,) = decode_images([blob], ImageLimits(), resize_size=256)
assert image.mode == "RGB"
print((status("VmHWM:") - before) / (image.width * image.height))
"""


def _image(kind: str, mode: str, width: int, height: int) -> bytes:
    """A picture that is not flat (a flat one's copies can share the kernel's zero pages, or compress to
    nothing in RSS: it hid a peak of 12 bytes a pixel as 6.8, the peak of the process before as 0)."""
    if mode == "I;16":
        picture = Image.fromarray((np.mgrid[0:height, 0:width][1] * 20 % 65536).astype(np.uint16))
    else:
        picture = _gradient("RGBA" if mode in ("RGBA", "LA") else "RGB", width, height).convert(mode)
    buffer = io.BytesIO()
    picture.save(buffer, format=kind)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("kind", "mode", "most"),
    [
        ("PNG", "RGB", 4.5),
        ("JPEG", "RGB", 4.5),
        ("PNG", "L", 5.5),
        ("PNG", "RGBA", 8.5),
        ("PNG", "LA", 8.5),
        ("PNG", "I;16", 5.5),
        ("JPEG", "CMYK", 8.5),
    ],
)
def test_decoding_an_image_peaks_at_a_few_bytes_per_pixel(kind: str, mode: str, most: float, tmp_path: Path) -> None:
    """A 4000 x 3000 image decoded in a fresh process that read only its bytes: the growth of its peak RSS."""
    path = tmp_path / "image"
    path.write_bytes(_image(kind, mode, 4000, 3000))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True, env=env, timeout=120, check=True
    )
    per_pixel = float(result.stdout.strip())
    assert per_pixel <= most, f"decoding a {mode} {kind} peaked at {per_pixel:.1f} bytes per pixel"


_HELD_PROBE = """
import ctypes, gc, sys
from pathlib import Path
from shared.images import ImageLimits, decode_images
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
blobs = [Path(sys.argv[1]).read_bytes()] * int(sys.argv[2])
gc.collect()
before = status("VmRSS:")
images = decode_images(blobs, ImageLimits(), resize_size=256)
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)  # NOTE: what was freed goes back, as a service trims its heap
pixels = sum(image.width * image.height for image in images)
print((status("VmRSS:") - before) / pixels, (status("VmHWM:") - before) / pixels)
"""


def _gradient(mode: str, width: int, height: int) -> Image.Image:
    """A picture that compresses well (a few KB) but is not flat, so no codec special-cases it."""
    y, x = np.mgrid[0:height, 0:width]
    picture = Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8))
    if mode == "RGBA":
        picture.putalpha(128)
    return picture


@pytest.mark.parametrize(
    ("kind", "mode", "options"),
    [
        ("WEBP", "RGB", {"quality": 50}),
        ("WEBP", "RGB", {"lossless": True}),
        ("WEBP", "RGBA", {"lossless": True}),
        ("PNG", "RGBA", {}),
    ],
)
def test_a_batch_holds_its_rgb_images_only(kind: str, mode: str, options: dict[str, object], tmp_path: Path) -> None:
    """Four 3000 x 2000 images decoded together (a fresh process): the images returned hold 4 bytes a pixel,
    what the edge's decode budget prices, and the batch peaks at one image's conversion above that. Before,
    an RGB WebP came back with its file, which keeps libwebp's two canvases and a copy of the frame (12.4
    bytes a pixel held until the head had run; 3.1 times the price), and each opened file of a batch kept
    its pixels until the last image was decoded (8.5 bytes a pixel at the peak for RGBA PNGs, 16 for WebPs)."""
    path = tmp_path / "image"
    buffer = io.BytesIO()
    _gradient(mode, 3000, 2000).save(buffer, format=kind, **options)
    path.write_bytes(buffer.getvalue())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _HELD_PROBE, str(path), "4"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    held, peak = (float(value) for value in result.stdout.split())
    assert held <= 4.5, f"four {mode} {kind} images decoded hold {held:.1f} bytes per pixel"
    assert peak <= 4 + 16 / 4 + 0.5, f"decoding four {mode} {kind} images peaked at {peak:.1f} bytes per pixel"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def _with_chunks_after_ihdr(png: bytes, chunks: bytes) -> bytes:
    return png[:33] + chunks + png[33:]  # NOTE: the signature (8) and IHDR (25)


_TEXT_PROBE = """
import sys
from pathlib import Path
from shared.images import ImageLimits, decode_images
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
blobs = [Path(sys.argv[1]).read_bytes()] * 4
before = status("VmRSS:")
images = decode_images(blobs, ImageLimits(), resize_size=256)
print(status("VmHWM:") - before)
"""


def test_a_png_s_text_is_not_decompressed_and_kept(tmp_path: Path) -> None:
    """Four 66 KB PNGs of 1x1 pixel (a price of 16 bytes), each with 62 compressed text chunks of 1 MB, one
    character in each outside the Basic Multilingual Plane (4 bytes a character): Pillow decompressed them all
    and kept the text with the images, 1 GB until the head had run. Text chunks are dropped before decoding."""
    text = b"a" * (1024 * 1024 - 8) + "\U0001f600".encode()
    chunks = b"".join(_png_chunk(b"iTXt", b"k%d\x00\x01\x00\x00\x00" % i + zlib.compress(text, 9)) for i in range(62))
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1), "red").save(buffer, format="PNG")
    path = tmp_path / "text.png"
    path.write_bytes(_with_chunks_after_ihdr(buffer.getvalue(), chunks))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _TEXT_PROBE, str(path)], capture_output=True, text=True, env=env, timeout=120, check=True
    )
    assert int(result.stdout) < 16 * 1024 * 1024, f"decoding took {int(result.stdout) / 2**20:.0f} MiB"


def test_the_exif_of_a_png_s_text_chunk_still_turns_it_upright() -> None:
    """Some writers store EXIF in a "Raw profile type exif" text chunk, Pillow reads the orientation from it:
    that chunk is kept (orientation 6: a 40 x 20 image decodes 20 x 40, as Pillow turns it), the rest dropped."""
    exif = Image.Exif()
    exif[0x0112] = 6
    raw = exif.tobytes()
    profile = b"\nexif\n%8d\n" % len(raw) + raw.hex().encode()
    chunks = _png_chunk(b"zTXt", b"Raw profile type exif\x00\x00" + zlib.compress(profile))
    chunks += _png_chunk(b"tEXt", b"Comment\x00hello")
    picture = Image.fromarray(np.arange(40 * 20 * 3, dtype=np.uint8).reshape(20, 40, 3))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    blob = _with_chunks_after_ihdr(buffer.getvalue(), chunks)
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(blob)))
    assert expected.size == (20, 40)
    (image,) = decode_images([blob], ImageLimits(), resize_size=256)
    assert np.array_equal(np.asarray(image), np.asarray(expected.convert("RGB")))


def _whole_image_rgb(image: Image.Image) -> Image.Image:
    """The conversion as it was, whole-image: transposed, then composited over white."""
    image = ImageOps.exif_transpose(image)
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA", "P"])
def test_compositing_in_bands_gives_the_whole_image_s_pixels(mode: str) -> None:
    """Alpha is composited over white in bands of rows (to hold no more than the RGB copy beside the image):
    the pixels are those of compositing the whole image at once, turned upright as before (orientation 6)."""
    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (700, 300, 4), dtype=np.uint8))  # NOTE: several bands
    picture = rgba if mode == "RGBA" else rgba.convert(mode)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    options: dict[str, object] = {"transparency": 3} if mode == "P" else {}
    picture.save(buffer, format="TIFF" if mode == "PA" else "PNG", exif=exif.tobytes(), **options)
    blob = buffer.getvalue()
    (image,) = decode_images([blob], ImageLimits(formats=("PNG", "TIFF")), resize_size=256)
    assert image.size == (700, 300)
    assert np.array_equal(np.asarray(image), np.asarray(_whole_image_rgb(Image.open(io.BytesIO(blob)))))
