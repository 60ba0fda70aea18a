"""An image of an accepted format whose header says it is 0 pixels wide or high is a malformed image (422,
naming the size), not "not an image" (415); a 1x1 image of every accepted format still classifies."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from edge_service import EdgeSettings, create_app
from shared.errors import UnsupportedMediaType
from shared.images import ImageLimits, decode_image

FORMATS = "JPEG,PNG,WEBP,GIF"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(width: int, height: int) -> bytes:
    """An 8-bit RGB PNG written by hand (PIL will not write a 0-pixel image): IHDR, rows of black, IEND."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = (b"\0" + b"\0" * 3 * width) * height
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")


def gif(width: int, height: int) -> bytes:
    """A GIF89a with a 2-colour table and one image of the screen's size (LZW data of 1x1)."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    frame = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return screen + frame + b";"


def _pil(image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1), (200, 100, 50)).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def jpeg(width: int, height: int) -> bytes:
    """A 1x1 baseline JPEG from PIL with its SOF0 frame header's size replaced."""
    data = bytearray(_pil("JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def webp(width: int, height: int) -> bytes:
    """A 1x1 lossy (VP8) WebP from PIL with its frame header's 14-bit size replaced."""
    data = bytearray(_pil("WEBP", lossless=False))
    assert data[12:16] == b"VP8 " and data[23:26] == b"\x9d\x01\x2a"
    data[26:30] = struct.pack("<HH", width, height)
    return bytes(data)


MAKERS: dict[str, Callable[[int, int], bytes]] = {"PNG": png, "GIF": gif, "JPEG": jpeg, "WEBP": webp}


def _refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = EdgeSettings(weights="none", cut="output", image_formats=FORMATS)  # type: ignore[call-arg]
    with TestClient(create_app(settings, cloud_transport=httpx.MockTransport(_refuse))) as test_client:
        yield test_client


@pytest.mark.parametrize("size", [(0, 0), (0, 5), (5, 0)], ids=["0x0", "0x5", "5x0"])
@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_a_zero_size_image_is_a_422_naming_its_size(client: TestClient, kind: str, size: tuple[int, int]) -> None:
    width, height = size
    response = client.post("/v1/classify", files={"image": (f"a.{kind.lower()}", MAKERS[kind](width, height))})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 422 and body["type"].endswith("/invalid-image")
    detail = f"the {kind} image's header says it is {width} pixels wide and {height} high; it needs at least 1 of each"
    assert body["detail"] == detail


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_a_1x1_image_still_classifies(client: TestClient, kind: str) -> None:
    response = client.post("/v1/classify", files={"image": (f"a.{kind.lower()}", MAKERS[kind](1, 1))})
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) > 0


def test_a_zero_size_image_in_a_batch_is_named(client: TestClient) -> None:
    files = [("images", ("a.png", png(1, 1))), ("images", ("empty.png", png(0, 3)))]
    response = client.post("/v1/classify/batch", files=files)
    assert response.status_code == 422
    assert response.json()["detail"].startswith('image 1 ("empty.png") (0-based) of 2: the PNG image\'s header says')


def test_a_png_signature_with_a_broken_header_is_422_and_anything_else_415(client: TestClient) -> None:
    broken = client.post("/v1/classify", files={"image": ("a.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40)})
    assert broken.status_code == 422
    assert broken.json()["detail"] == "the PNG image cannot be read: its header is malformed"
    text = client.post("/v1/classify", files={"image": ("a.txt", b"hello world")})
    assert text.status_code == 415


def test_a_zero_size_image_of_a_format_not_accepted_is_still_415() -> None:
    with pytest.raises(UnsupportedMediaType, match="not an image in an accepted format"):
        decode_image(gif(0, 0), ImageLimits(formats=("JPEG", "PNG", "WEBP")))
