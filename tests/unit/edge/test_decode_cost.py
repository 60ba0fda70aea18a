"""The edge's decode budget: what a request's images cost from their headers, and the 503 past the budget."""

from __future__ import annotations

import asyncio
import io
import json
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from edge_service import EdgeSettings, create_app
from edge_service.runtime import EdgeModel, Prepared
from service_core.image_cost import (
    BYTES_PER_PIXEL,
    CONVERSION_BYTES_PER_PIXEL,
    GREY_CONVERSION_BYTES_PER_PIXEL,
    TIFF_DECODER_BYTES_PER_PIXEL,
    WEBP_DECODER_BYTES_PER_PIXEL,
    images_cost,
)
from shared.errors import InvalidImage, PayloadTooLarge
from shared.image_headers import declared_size, is_grey_or_palette, jpeg_coefficient_bytes, signature_format
from shared.images import ImageLimits, decode_images, decoded_size
from shared.models import load_model
from shared.protocol import encode_logits
from shared.wire import WireLimits, read_header
from tests.support.images import png_bytes_of_size

TINY = "tests.fixture_models:tiny_cnn"
MIB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[3]


def _jpeg(width: int, height: int) -> bytes:
    y, x = np.mgrid[0:height, 0:width]
    picture = np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


@pytest.mark.parametrize(("width", "height"), [(1000, 700), (2000, 1100), (300, 200), (130, 1000), (257, 129)])
def test_decoded_size_is_the_size_a_jpeg_is_decoded_at(width: int, height: int) -> None:
    """Pillow's draft arithmetic (its 1/8, 1/4, 1/2 scales), at a resize size of 32 (drafts from 128 pixels)."""
    (image,) = decode_images([_jpeg(width, height)], resize_size=32)
    assert decoded_size("JPEG", width, height, 32) == image.size
    assert decoded_size("PNG", width, height, 32) == (width, height)  # only JPEGs have a reduced scale
    assert decoded_size("JPEG", width, height, None) == (width, height)


def test_a_request_costs_its_decoded_pixels_from_the_headers() -> None:
    """Its images' RGB pixels, and the largest one's conversion beside them (they decode one at a time)."""
    limits = ImageLimits(max_pixels=40_000_000, max_batch_pixels=120_000_000)
    big = png_bytes_of_size(6000, 5000)  # 30 megapixels in a few KB, greyscale
    converting = 30_000_000 * GREY_CONVERSION_BYTES_PER_PIXEL
    assert images_cost([big], limits, 256) == 30_000_000 * BYTES_PER_PIXEL + converting
    assert images_cost([big, big, big], limits, 256) == 90_000_000 * BYTES_PER_PIXEL + converting
    photo = _jpeg(4096, 3072)  # decoded at half scale for a 256 resize (both sides at least 1024)
    assert images_cost([photo], limits, 256) == 2048 * 1536 * (BYTES_PER_PIXEL + CONVERSION_BYTES_PER_PIXEL)
    # refused before anything is decoded (413 or 415): they cost nothing
    assert images_cost([big] * 5, limits, 256) == 0  # 150 megapixels together
    assert images_cost([png_bytes_of_size(7000, 7000)], limits, 256) == 0  # 49 megapixels
    assert images_cost([b"not an image"], limits, 256) == 0
    # a header this parser cannot read costs the most an image may, with the most any decoder holds
    most = BYTES_PER_PIXEL + CONVERSION_BYTES_PER_PIXEL + WEBP_DECODER_BYTES_PER_PIXEL
    assert images_cost([b"\x89PNG\r\n\x1a\n" + bytes(8)], limits, 256) == 40_000_000 * most


@pytest.mark.parametrize(("cut", "codec"), [("input", "image"), ("block", "fp32")])
def test_past_the_budget_a_request_gets_503_before_its_images_are_decoded(cut: str, codec: str) -> None:
    """A batch of four 9-megapixel PNGs (144 MiB decoded) waits on the cloud. At cut ``input`` its images wait
    too (the fallback needs them): another batch like it would pass the 200 MiB budget (503, Retry-After),
    a small image still fits beside it. At any other cut the images are freed once the head has run, and so
    is their part of the budget: the other batch is served."""
    loaded = load_model(TINY, "none")
    entered, release = threading.Event(), threading.Event()

    async def cloud(request: httpx.Request) -> httpx.Response:
        header = read_header(request.content, WireLimits())[0]
        rows = json.loads(header["tensors"])[0]["shape"][0]
        if rows == 4 and not entered.is_set():
            entered.set()
            while not release.is_set():
                await asyncio.sleep(0.01)
        reply = encode_logits(torch.zeros(rows, 10), model=TINY, weights=loaded.digest, cut=header["cut"])
        return httpx.Response(200, content=reply)

    settings = EdgeSettings(
        model=TINY, weights="none", cut=cut, codec=codec, max_decoded_bytes_in_flight=200 * MIB,
        read_timeout_s=30.0,
    )  # type: ignore[call-arg]  # fmt: skip
    big = png_bytes_of_size(3000, 3000)
    batch = [("images", (f"{i}.png", big)) for i in range(4)]
    with TestClient(create_app(settings, cloud_transport=httpx.MockTransport(cloud))) as client:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(client.post, "/v1/classify/batch", files=batch)
            assert entered.wait(60)
            second = client.post("/v1/classify/batch", files=batch)
            small = client.post("/v1/classify", files={"image": ("s.png", png_bytes_of_size(64, 64))})
            release.set()
            assert first.result(60).status_code == 200
        if cut == "input":
            assert second.status_code == 503, second.text
            assert second.headers["retry-after"] == "1"
            assert "MAX_DECODED_BYTES_IN_FLIGHT" in second.json()["detail"]
        else:
            assert second.status_code == 200, second.text
        assert small.status_code == 200, small.text
        assert client.post("/v1/classify/batch", files=batch).status_code == 200  # the budget is free again


def _bmp_core(width: int, height: int) -> bytes:
    """An OS/2 bitmap: its 12-byte BITMAPCOREHEADER has 16-bit sides (Pillow reads it as any BMP)."""
    pixels = bytes(((width * 3 + 3) // 4) * 4 * height)
    head = b"BM" + (26 + len(pixels)).to_bytes(4, "little") + bytes(4) + (26).to_bytes(4, "little")
    return head + b"".join(n.to_bytes(2 if n != 12 else 4, "little") for n in (12, width, height, 1, 24)) + pixels


def _gif_with_a_small_screen(width: int, height: int) -> bytes:
    """A GIF whose logical screen says 1x1 while its first frame is ``width`` x ``height`` (Pillow grows the
    image to the frame)."""
    buffer = io.BytesIO()
    Image.new("P", (width, height)).save(buffer, format="GIF")
    data = bytearray(buffer.getvalue())
    data[6:10] = (1).to_bytes(2, "little") + (1).to_bytes(2, "little")
    return bytes(data)


@pytest.mark.parametrize(
    ("kind", "blob"),
    [("BMP", _bmp_core(3000, 2000)), ("GIF", _gif_with_a_small_screen(3000, 2000))],
    ids=["bmp-core-header", "gif-frame-past-its-screen"],
)
def test_an_image_costs_at_least_what_pillow_decodes_it_to(kind: str, blob: bytes) -> None:
    """The budget holds only if a header never declares less than Pillow decodes: an OS/2 bitmap's header
    (16-bit sides) read as a Windows one declared 131 M x 1.5 M pixels (over the limit: the request cost
    nothing), and a GIF's logical screen of 1x1 hid a 6-megapixel first frame."""
    limits = ImageLimits(formats=(kind,), max_pixels=40_000_000, max_batch_pixels=120_000_000)
    (image,) = decode_images([blob], limits, resize_size=256)
    assert image.size == (3000, 2000)
    assert images_cost([blob], limits, 256) >= 3000 * 2000 * BYTES_PER_PIXEL


def test_a_jpeg_costs_at_least_the_last_frame_header_pillow_reads() -> None:
    """Pillow's JPEG size is its last SOF segment's before the scan, and its buffer is allocated at that size
    before libjpeg reads a byte: a 1x1 SOF ahead of a 6-megapixel one made the request cost 4 bytes (the
    first SOF's) while its decode allocated 18 MB, then failed; a 65535 x 65535 one ahead of it made the
    request cost nothing (as if refused for its size)."""
    photo = _jpeg(3000, 2000)
    limits = ImageLimits(max_pixels=40_000_000, max_batch_pixels=120_000_000)
    components = b"\x03\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    for side in (b"\x00\x01", b"\xff\xff"):  # NOTE: a 1x1 frame header, and one over the pixel limit
        fake = b"\xff\xc0\x00\x11\x08" + side + side + components
        blob = photo[:2] + fake + photo[2:]
        assert Image.open(io.BytesIO(blob)).size == (3000, 2000)  # NOTE: not refused: it is decoded (and fails)
        priced = images_cost([blob], limits, 1024)  # NOTE: no reduced scale at 1024
        assert priced == 3000 * 2000 * (BYTES_PER_PIXEL + CONVERSION_BYTES_PER_PIXEL)


def test_images_a_thread_still_decodes_past_the_deadline_stay_reserved(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request past its deadline gets 503, but the head's thread goes on decoding its images: their part of
    the budget is held until that thread ends (it was given back with the 503, so the budget admitted a
    second batch as large beside images still in memory)."""
    loaded = load_model(TINY, "none")
    entered, release = threading.Event(), threading.Event()
    prepare = EdgeModel.prepare

    def slow_prepare(self: EdgeModel, raw: Sequence[bytes], *args: Any, **kwargs: Any) -> Prepared:
        if len(raw) == 4 and not entered.is_set():
            entered.set()
            release.wait(60)
        return prepare(self, raw, *args, **kwargs)

    async def cloud(request: httpx.Request) -> httpx.Response:
        header = read_header(request.content, WireLimits())[0]
        rows = json.loads(header["tensors"])[0]["shape"][0]
        reply = encode_logits(torch.zeros(rows, 10), model=TINY, weights=loaded.digest, cut=header["cut"])
        return httpx.Response(200, content=reply)

    monkeypatch.setattr(EdgeModel, "prepare", slow_prepare)
    settings = EdgeSettings(
        model=TINY, weights="none", cut="block", codec="fp32", max_decoded_bytes_in_flight=200 * MIB,
        request_timeout_s=1.0, head_workers=2,
    )  # type: ignore[call-arg]  # fmt: skip
    batch = [("images", (f"{i}.png", png_bytes_of_size(3000, 3000))) for i in range(4)]  # 144 MiB decoded
    with TestClient(create_app(settings, cloud_transport=httpx.MockTransport(cloud))) as client:
        try:
            late = client.post("/v1/classify/batch", files=batch)
            assert late.status_code == 503, late.text
            assert "could not finish its part" in late.json()["detail"]
            assert entered.is_set()
            beside = client.post("/v1/classify/batch", files=batch)
            assert beside.status_code == 503, beside.text
            assert "MAX_DECODED_BYTES_IN_FLIGHT" in beside.json()["detail"]
        finally:
            release.set()
        deadline = time.monotonic() + 30  # NOTE: the first thread decodes and runs its head, then gives back
        while (answer := client.post("/v1/classify/batch", files=batch)).status_code != 200:
            assert "MAX_DECODED_BYTES_IN_FLIGHT" in answer.json()["detail"], answer.text
            assert time.monotonic() < deadline, "the budget was never given back"
            time.sleep(0.1)


_PEAK_PROBE = """
import sys
from pathlib import Path
from service_core.image_cost import images_cost
from shared.images import ImageLimits, decode_images
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
blob = Path(sys.argv[1]).read_bytes()
limits = ImageLimits(formats=tuple(sys.argv[2].split(",")))
cost = images_cost([blob], limits, 256)
before = status("VmRSS:")
images = decode_images([blob], limits, resize_size=256)
print(cost, status("VmHWM:") - before)
"""


def _assert_decoding_peaks_within_its_price(path: Path, limits: ImageLimits | None = None) -> None:
    """Decode the image at ``path`` in a fresh process: its peak RSS grows by at most what it is priced."""
    limits = limits or ImageLimits()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", _PEAK_PROBE, str(path), ",".join(limits.formats)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=True)
    cost, peak = (int(value) for value in result.stdout.split())
    assert peak <= cost * 1.1 + 2 * MIB, f"decoding peaked at {peak / MIB:.0f} MiB, priced {cost / MIB:.0f}"


@pytest.mark.parametrize(
    ("progressive", "subsampling"),
    [(True, 0), (True, 2), (False, 0)],
    ids=["progressive-444", "progressive-420", "baseline"],
)
def test_a_jpeg_costs_what_decoding_it_takes_at_the_peak(progressive: bool, subsampling: int, tmp_path: Path) -> None:
    """A 4000 x 3000 JPEG decoded at half scale for a 256 resize (a fresh process): the growth of its peak RSS is
    within its price. A progressive JPEG's coefficients are held whole, at full resolution, while it decodes:
    priced at its 12 MB half scale, the 4:4:4 one took 84 MB."""
    y, x = np.mgrid[0:3000, 0:4000]
    picture = Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8))
    path = tmp_path / "photo.jpg"
    picture.save(path, format="JPEG", quality=80, progressive=progressive, subsampling=subsampling)
    _assert_decoding_peaks_within_its_price(path)


def test_a_jpeg_whose_first_scan_leaves_out_components_costs_its_coefficients() -> None:
    """libjpeg buffers the whole image's coefficients for a sequential JPEG in several scans too (its first scan
    has fewer components than the frame): 3 components of 4000 x 3000 at 2 bytes a coefficient."""
    frame = b"\xff\xc0\x00\x11\x08" + (3000).to_bytes(2, "big") + (4000).to_bytes(2, "big")
    frame += b"\x03\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    one_component = b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"
    all_components = b"\xff\xda\x00\x0c\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00"
    assert jpeg_coefficient_bytes(b"\xff\xd8" + frame + one_component) == 3 * 4000 * 3000 * 2
    assert jpeg_coefficient_bytes(b"\xff\xd8" + frame + all_components) == 0


@pytest.mark.parametrize("options", [{"quality": 50}, {"lossless": True}], ids=["lossy", "lossless"])
def test_a_webp_costs_what_decoding_it_takes_at_the_peak(options: dict[str, object], tmp_path: Path) -> None:
    """Pillow decodes every WebP with libwebp's animation decoder, whose two canvases and the frame copied out
    of them are held while it decodes: a 3000 x 2000 WebP priced at its 24 MB RGB image took 98 MB."""
    y, x = np.mgrid[0:2000, 0:3000]
    picture = Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8))
    path = tmp_path / "picture.webp"
    picture.save(path, format="WEBP", **options)
    _assert_decoding_peaks_within_its_price(path)


def _picture(mode: str, width: int, height: int) -> Image.Image:
    """A gradient (not flat: no codec special-cases it) in ``mode``; RGBA with a varying alpha."""
    y, x = np.mgrid[0:height, 0:width]
    picture = Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8))
    if mode == "RGBA":
        picture.putalpha(Image.fromarray((x * 7 % 256).astype(np.uint8)))
    elif mode == "I;16":
        return Image.fromarray((x * 20 % 65536).astype(np.uint16))
    elif mode != "RGB":
        return picture.convert(mode)
    return picture


def _upright_turned() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # NOTE: turned: the decoded image is transposed
    return exif.tobytes()


@pytest.mark.parametrize(
    ("kind", "mode", "options"),
    [
        ("PNG", "LA", {}),
        ("PNG", "RGBA", {}),
        ("PNG", "P", {"transparency": 0, "exif": _upright_turned()}),
        ("PNG", "I;16", {"exif": _upright_turned()}),
        ("JPEG", "L", {"quality": 80, "exif": _upright_turned()}),
        ("BMP", "P", {}),
        ("PNG", "RGB", {"exif": _upright_turned()}),
        ("JPEG", "CMYK", {"quality": 80}),
        ("JPEG", "RGB", {"quality": 80, "exif": _upright_turned()}),
        ("WEBP", "RGBA", {"lossless": True}),
        ("GIF", "P", {"transparency": 0}),
    ],
    ids=lambda value: value if isinstance(value, str) else "+".join(value) or "plain",
)
def test_every_mode_decodes_within_its_price(kind: str, mode: str, options: dict[str, Any], tmp_path: Path) -> None:
    """A 2000 x 1500 image of each mode whose conversion to upright RGB held more than the RGB image (a fresh
    process): the growth of its peak RSS is within its price. Each was priced at the 4 bytes a pixel of the RGB
    image (a WebP's decoder buffers beside it) and peaked at 16 (LA), 13 (palette with a transparent colour),
    12 (RGBA), 8 (CMYK, an RGB image turned upright), 7 (16 bits), 5 to 5.5 (greyscale or palette, from its
    1-byte pixels beside the RGB ones), 1.33 times its price (an RGBA WebP)."""
    path = tmp_path / "image"
    _picture(mode, 2000, 1500).save(path, format=kind, **options)
    _assert_decoding_peaks_within_its_price(path, ImageLimits(formats=(kind,)))


@pytest.mark.parametrize(
    ("kind", "mode", "grey"),
    [("PNG", "1", True), ("PNG", "L", True), ("PNG", "P", True), ("PNG", "I;16", True), ("PNG", "LA", False),
     ("PNG", "RGB", False), ("JPEG", "L", True), ("JPEG", "RGB", False), ("JPEG", "CMYK", False),
     ("GIF", "P", True), ("BMP", "P", True), ("BMP", "RGB", False), ("WEBP", "RGB", False)],
)  # fmt: skip
def test_the_header_tells_greyscale_and_palette_images(kind: str, mode: str, grey: bool) -> None:
    """What prices an image's conversion at 2 bytes a pixel, not 4: the mode Pillow decodes it to."""
    buffer = io.BytesIO()
    _picture(mode, 40, 30).save(buffer, format=kind)
    blob = buffer.getvalue()
    assert is_grey_or_palette(kind, blob) is grey
    assert not is_grey_or_palette("PNG", blob[:20])  # NOTE: a header cut short is priced as RGB


def _tiff_rgba16(width: int, height: int, order: str = "<") -> bytes:
    """A 16-bit RGBA TIFF written by hand (Pillow does not write one) in one deflated strip: the largest raw
    strip Pillow's TIFF decoder reads (8 bytes a pixel) is the whole image."""
    _, x = np.mgrid[0:height, 0:width]
    samples = np.stack([(x * 30) % 65536] * 4, axis=-1).astype(order + "u2")
    strip = zlib.compress(samples.tobytes(), 1)
    bits = struct.pack(order + "4H", 16, 16, 16, 16)
    ifd_at = 8 + len(strip) + len(bits)
    side = 3 if order == ">" else 4  # NOTE: the sides as SHORT (big-endian) or LONG (little-endian) values
    entries = [(256, side, 1, width), (257, side, 1, height), (258, 3, 4, 8 + len(strip)), (259, 3, 1, 8),
               (262, 3, 1, 2), (273, 4, 1, 8), (277, 3, 1, 4), (278, 4, 1, height), (279, 4, 1, len(strip)),
               (338, 3, 1, 2)]  # fmt: skip
    ifd = struct.pack(order + "H", len(entries))
    for tag, kind, count, value in entries:
        field = struct.pack(order + ("H" if kind == 3 and count == 1 else "I"), value).ljust(4, b"\0")
        ifd += struct.pack(order + "HHI", tag, kind, count) + field
    head = (b"II*\0" if order == "<" else b"MM\0*") + struct.pack(order + "I", ifd_at)
    return head + strip + bits + ifd + b"\0\0\0\0"


@pytest.mark.parametrize("order", ["<", ">"], ids=["little-endian", "big-endian"])
def test_a_tiff_costs_its_declared_pixels_and_its_strip(order: str, tmp_path: Path) -> None:
    """A TIFF's header was not read: every TIFF cost the most an image may (40 megapixels with the most any
    decoder holds: 800 MB for a 3-megapixel image). Its size is now read from its first directory, as Pillow
    reads it, and its decoder's strip priced: a 16-bit RGBA TIFF in one strip peaks at 12 bytes a pixel."""
    blob = _tiff_rgba16(2000, 1500, order)
    limits = ImageLimits(formats=("TIFF",))
    assert Image.open(io.BytesIO(blob)).size == (2000, 1500)
    assert images_cost([blob], limits, 256) == 2000 * 1500 * (BYTES_PER_PIXEL + TIFF_DECODER_BYTES_PER_PIXEL)
    path = tmp_path / "image.tif"
    path.write_bytes(blob)
    _assert_decoding_peaks_within_its_price(path, limits)
    for mode in ("1", "P", "RGB"):  # NOTE: as Pillow writes them
        buffer = io.BytesIO()
        _picture(mode, 70000 if mode == "1" else 300, 2).save(buffer, format="TIFF")
        assert declared_size("TIFF", buffer.getvalue()) == Image.open(buffer).size


def _tiled_tiff(side: int, tiles: Sequence[tuple[int, int]], deflated: int) -> bytes:
    """An 8-bit RGB TIFF of ``side`` x ``side`` pixels in one deflated tile holding ``deflated`` zero bytes,
    with a TileWidth and a TileLength entry for each of ``tiles`` (width, length), in that order."""
    data = zlib.compress(bytes(deflated), 9)
    entries = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 3, 0), (259, 3, 1, 8), (262, 3, 1, 2), (277, 3, 1, 3),
               (284, 3, 1, 1), (324, 4, 1, 0), (325, 4, 1, len(data))]  # fmt: skip
    entries += [entry for width, length in tiles for entry in ((322, 4, 1, width), (323, 4, 1, length))]
    bits_at = 8 + 2 + 12 * len(entries) + 4
    data_at = bits_at + 6
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        value = {258: bits_at, 324: data_at}.get(tag, value)
        field = struct.pack("<H" if kind == 3 and count == 1 else "<I", value).ljust(4, b"\0")
        ifd += struct.pack("<HHI", tag, kind, count) + field
    return b"II*\0" + struct.pack("<I", 8) + ifd + b"\0\0\0\0" + struct.pack("<3H", 8, 8, 8) + data


_FAILING_PEAK_PROBE = _PEAK_PROBE.replace(
    "images = decode_images([blob], limits, resize_size=256)",
    "try:\n    images = decode_images([blob], limits, resize_size=256)\nexcept Exception:\n    pass",
)


def test_a_tiled_tiff_costs_its_tile(tmp_path: Path) -> None:
    """libtiff allocates a whole tile to decode one, and a tile is not bounded by the image: a 49 KB TIFF of
    16 x 16 pixels in a 4096 x 4096 tile held 52 MB, priced 3 KB (and a 1.2 KB one in a 16384 x 16384 tile
    790 MB). A tile is now priced at its size; one over ``max_pixels`` is refused from the header (413)."""
    blob = _tiled_tiff(16, [(2048, 2048)], 2048 * 2048 * 3)
    limits = ImageLimits(formats=("TIFF",))
    assert images_cost([blob], limits, 256) >= 2048 * 2048 * 3
    path = tmp_path / "tiled.tif"
    path.write_bytes(blob)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", _FAILING_PEAK_PROBE, str(path), "TIFF"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=True)
    cost, peak = (int(value) for value in result.stdout.split())
    assert peak > 8 * MIB  # NOTE: the tile was allocated (what this test is about)
    assert peak <= cost * 1.1 + 2 * MIB, f"decoding peaked at {peak / MIB:.0f} MiB, priced {cost / MIB:.0f}"
    # NOTE: Pillow reads a tag given twice at its last, libtiff at its first: either way, the largest is refused
    for tiles in ([(16384, 16384)], [(16384, 16384), (16, 16)], [(16, 16), (16384, 16384)]):
        huge = _tiled_tiff(16, tiles, 1 << 20)
        assert images_cost([huge], limits, 256) == 0  # NOTE: refused before anything is decoded
        with pytest.raises(PayloadTooLarge, match="tiles"):
            decode_images([huge], limits, resize_size=256)
    many = _tiled_tiff(16, [(16, 16)] * 2100, 16 * 16 * 3)  # NOTE: past the entries read here: not told
    assert images_cost([many], limits, 256) >= limits.max_pixels * BYTES_PER_PIXEL  # NOTE: its size not told
    with pytest.raises(InvalidImage, match="tiles"):
        decode_images([many], limits, resize_size=256)
    one_side = _tiled_tiff(16, [(16, 16)], 16 * 16 * 3).replace(
        struct.pack("<HHI", 323, 4, 1), struct.pack("<HHI", 1, 4, 1)
    )
    with pytest.raises(InvalidImage, match="tiles"):
        decode_images([one_side], limits, resize_size=256)


@pytest.mark.parametrize("prefix", [b"II\0*", b"II+\0"], ids=["magic-swapped", "bigtiff"])
def test_every_header_pillow_opens_as_a_tiff_is_priced(prefix: bytes) -> None:
    """Pillow opens a TIFF whose 42 is in the other byte order ("II\\0*", "MM*\\0") and BigTIFF; their
    signature was not known here, so they cost nothing ("refused before decoding"), and were decoded: a 5 MB
    1-bit TIFF of 40 megapixels starting "II\\0*" held 198 MB, priced 0."""
    from PIL import TiffImagePlugin

    assert all(signature_format(header + bytes(12)) == "TIFF" for header in TiffImagePlugin.PREFIXES)
    buffer = io.BytesIO()
    Image.new("1", (8000, 5000), 1).save(buffer, format="TIFF")
    plain = buffer.getvalue()
    limits = ImageLimits(formats=("TIFF",))
    if prefix == b"II\0*":
        odd = prefix + plain[4:]
        assert Image.open(io.BytesIO(odd)).size == (8000, 5000)
        assert images_cost([odd], limits, 256) == images_cost([plain], limits, 256) >= 8000 * 5000 * BYTES_PER_PIXEL
    else:  # NOTE: Pillow writes no BigTIFF here; one by hand (its sides as LONG8)
        entries = [(256, 16, 8000), (257, 16, 5000), (258, 3, 1), (259, 3, 1), (262, 3, 0), (273, 16, 64)]
        ifd = struct.pack("<Q", len(entries)) + b"".join(
            struct.pack("<HHQQ", tag, kind, 1, value) for tag, kind, value in entries
        )
        big = prefix + struct.pack("<HHQ", 8, 0, 16) + ifd + struct.pack("<Q", 0)
        assert declared_size("TIFF", big) == (8000, 5000)
        assert images_cost([big], limits, 256) >= 8000 * 5000 * BYTES_PER_PIXEL
