"""What an image's first bytes say: its format (by signature) and the size its header declares.

Used only to explain a refusal: Pillow refuses some images of an accepted format outright (a PNG whose
IHDR says width 0 is "not identified" by its PNG driver), which would read as "not an image" (415). With
the signature the service can tell the client that it sent a malformed PNG (422), and with the header's
size, what is wrong with it. Parsing is bounded (a fixed number of JPEG segments) and never decodes.
"""

from __future__ import annotations

import struct

__all__ = ["declared_size", "signature_format"]

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
_JPEG_MAX_SEGMENTS = 4096
_JPEG_STANDALONE = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOFn; not DHT, JPG, DAC


def signature_format(data: bytes) -> str | None:
    """The Pillow name of the format ``data`` starts like (PNG, JPEG, GIF, WEBP, BMP, TIFF), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((kind for signature, kind in _SIGNATURES if data.startswith(signature)), None)


def declared_size(kind: str, data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` as the header of a ``kind`` image declares it, or None when it cannot be found."""
    try:
        if kind == "PNG" and data[12:16] == b"IHDR":
            width, height = struct.unpack_from(">II", data, 16)
            return int(width), int(height)
        if kind == "GIF":
            width, height = struct.unpack_from("<HH", data, 6)
            return int(width), int(height)
        if kind == "BMP":
            width, height = struct.unpack_from("<ii", data, 18)
            return abs(int(width)), abs(int(height))  # NOTE: a negative height is a top-down bitmap
        if kind == "WEBP":
            return _webp_size(data)
        if kind == "JPEG":
            return _jpeg_size(data)
    except struct.error:
        return None
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", data, 26)
        return int(width) & 0x3FFF, int(height) & 0x3FFF
    if chunk == b"VP8L" and data[20:21] == b"\x2f":
        (bits,) = struct.unpack_from("<I", data, 21)
        return (int(bits) & 0x3FFF) + 1, ((int(bits) >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """The size in the first SOFn segment (walking at most a fixed number of segments)."""
    offset = 2
    for _ in range(_JPEG_MAX_SEGMENTS):
        if data[offset : offset + 1] != b"\xff":
            return None
        marker = data[offset + 1 : offset + 2]
        if not marker:
            return None
        code = marker[0]
        if code == 0xFF:  # NOTE: a fill byte before the marker
            offset += 1
            continue
        if code in _JPEG_STANDALONE:
            offset += 2
            continue
        (length,) = struct.unpack_from(">H", data, offset + 2)
        if code in _JPEG_FRAMES:
            height, width = struct.unpack_from(">HH", data, offset + 5)
            return int(width), int(height)
        if code == 0xDA or length < 2:  # NOTE: scan data before any frame header: not a JPEG we can read
            return None
        offset += 2 + int(length)
    return None
