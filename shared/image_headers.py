"""What an image's first bytes say: its format (by signature) and the size its header declares.

Used to explain a refusal: Pillow refuses some images of an accepted format outright (a PNG whose IHDR
says width 0 is "not identified" by its PNG driver), which would read as "not an image" (415). With the
signature the service can tell the client that it sent a malformed PNG (422), and with the header's size,
what is wrong with it. And to price a request before anything is decoded (edge_service.decode_cost): the
size returned is the one Pillow opens the image at (an OS/2 bitmap's 16-bit sides, a GIF grown to its
first frame, a JPEG's last frame header), or None where this parser cannot tell. Parsing is bounded (a
fixed number of JPEG segments and GIF blocks) and never decodes.
"""

from __future__ import annotations

import struct

__all__ = [
    "ImageData",
    "declared_size",
    "is_grey_or_palette",
    "jpeg_coefficient_bytes",
    "signature_format",
    "tiff_tile_pixels",
]

ImageData = bytes | memoryview
"""An image's bytes, or a view of them (a payload's pictures are read in place: nothing here copies them)."""

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    # NOTE: every header Pillow opens as a TIFF: its byte order, then 42 in either order, or BigTIFF's 43
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II\x00*", "TIFF"),
    (b"MM*\x00", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
)
_JPEG_MAX_SEGMENTS = 4096
_GIF_MAX_BLOCKS = 4096
_BMP_CORE_HEADER = 12
# NOTE: as Pillow's JpegImagePlugin.MARKER: markers without a length (JPG, RSTn, SOI, EOI, JPGn), the frame
# headers (SOFn and DHP; not DHT, JPG, DAC), and every other marker it reads (each has a length)
_JPEG_STANDALONE = frozenset({0xC8, *range(0xD0, 0xDA), *range(0xF0, 0xFE)})
_JPEG_FRAMES = (frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}) | {0xDE}
_JPEG_SEGMENTS = frozenset(range(0xC0, 0xFF)) - _JPEG_STANDALONE
_JPEG_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})


def signature_format(data: ImageData) -> str | None:
    """The Pillow name of the format ``data`` starts like (PNG, JPEG, GIF, WEBP, BMP, TIFF), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((kind for signature, kind in _SIGNATURES if data[: len(signature)] == signature), None)


def declared_size(kind: str, data: ImageData) -> tuple[int, int] | None:
    """``(width, height)`` as the header of a ``kind`` image declares it, or None when it cannot be found."""
    try:
        if kind == "PNG" and data[12:16] == b"IHDR":
            width, height = struct.unpack_from(">II", data, 16)
            return int(width), int(height)
        if kind == "GIF":
            return _gif_size(data)
        if kind == "BMP":
            return _bmp_size(data)
        if kind == "WEBP":
            return _webp_size(data)
        if kind == "JPEG":
            return _jpeg_size(data)
        if kind == "TIFF":
            return _tiff_size(data)
    except struct.error:
        return None
    return None


_TIFF_MAX_ENTRIES = 4096
_TIFF_WIDTH, _TIFF_LENGTH = 256, 257
_TIFF_TILE_WIDTH, _TIFF_TILE_LENGTH = 322, 323
_TIFF_SHORT, _TIFF_LONG, _TIFF_LONG8 = 3, 4, 16


def _tiff_entries(data: ImageData) -> list[tuple[int, int | None]]:
    """The entries of the first image file directory (the frame Pillow opens), in order, for the tags this
    module reads: ``(tag, value)``, the value None when it is not one SHORT or LONG (or BigTIFF's LONG8).
    Read as Pillow reads the header: the byte order from its first two bytes, BigTIFF when its third is 43."""
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:3] == b"+"
    (offset,) = struct.unpack_from(order + ("Q" if big else "I"), data, 8 if big else 4)
    (count,) = struct.unpack_from(order + ("Q" if big else "H"), data, offset)
    if count > _TIFF_MAX_ENTRIES:  # NOTE: not read here (Pillow and libtiff read them all): not told
        raise struct.error(f"a TIFF directory of {count} entries")
    start, size = (offset + 8, 20) if big else (offset + 2, 12)
    entries: list[tuple[int, int | None]] = []
    for index in range(int(count)):
        at = start + size * index
        tag, kind, values = struct.unpack_from(order + ("HHQ" if big else "HHI"), data, at)
        if tag not in (_TIFF_WIDTH, _TIFF_LENGTH, _TIFF_TILE_WIDTH, _TIFF_TILE_LENGTH):
            continue
        value_format = {_TIFF_SHORT: "H", _TIFF_LONG: "I", **({_TIFF_LONG8: "Q"} if big else {})}.get(int(kind))
        if value_format is None or values != 1:
            entries.append((int(tag), None))
            continue
        (value,) = struct.unpack_from(order + value_format, data, at + size - (8 if big else 4))
        entries.append((int(tag), int(value)))
    return entries


def _tiff_size(data: ImageData) -> tuple[int, int] | None:
    """ImageWidth and ImageLength of the first image file directory (the frame Pillow opens), each the last
    of its tag there, as Pillow reads them; None when either is missing or not a SHORT or LONG."""
    found: dict[int, int] = {}
    for tag, value in _tiff_entries(data):
        if tag in (_TIFF_WIDTH, _TIFF_LENGTH):
            if value is None:
                found.pop(tag, None)
            else:
                found[tag] = value
    if _TIFF_WIDTH not in found or _TIFF_LENGTH not in found:
        return None
    return found[_TIFF_WIDTH], found[_TIFF_LENGTH]


def tiff_tile_pixels(data: ImageData) -> int | None:
    """The pixels of one tile of a tiled TIFF's first directory (TileWidth x TileLength), 0 for a TIFF in
    strips (neither tag), None when its tile size cannot be told here (one of the two tags alone, or one not
    a single SHORT or LONG, or a directory that cannot be read). libtiff allocates a whole tile to decode
    one, whatever the image's size: a tile is not bounded by the image (a 16 x 16 image's tile can be
    65535 x 65535). A tag given twice counts at its largest (Pillow reads the last, libtiff the first)."""
    try:
        entries = _tiff_entries(data)
    except struct.error:
        return None
    sides: dict[int, int] = {}
    for tag, value in entries:
        if tag in (_TIFF_TILE_WIDTH, _TIFF_TILE_LENGTH):
            if value is None:
                return None
            sides[tag] = max(value, sides.get(tag, 0))
    if not sides:
        return 0
    if len(sides) != 2:
        return None
    return sides[_TIFF_TILE_WIDTH] * sides[_TIFF_TILE_LENGTH]


def is_grey_or_palette(kind: str, data: ImageData) -> bool:
    """Whether the header of this ``kind`` image says Pillow decodes it to greyscale or a palette (modes 1, L,
    P, or 16-bit greyscale, which :mod:`shared.images` scales to L): 1 or 2 bytes a pixel, not 4. False when
    the header says otherwise or cannot be read this far."""
    try:
        if kind == "PNG" and data[12:16] == b"IHDR":
            return data[25] in (0, 3)  # NOTE: colour type 0 (grey, any depth) or 3 (palette)
        if kind == "GIF":
            return True  # NOTE: its first frame (the one decoded) is always P or L
        if kind == "BMP":
            (header_size,) = struct.unpack_from("<I", data, 14)
            (bits,) = struct.unpack_from("<H", data, 24 if header_size == _BMP_CORE_HEADER else 28)
            return int(bits) <= 8
        if kind == "JPEG":
            frame = _jpeg_frame(data)
            return frame is not None and len(frame[2]) == 1
    except (struct.error, IndexError):
        return False
    return False


def _bmp_size(data: ImageData) -> tuple[int, int]:
    """An OS/2 bitmap's 12-byte header has 16-bit sides; every other (Windows) header 32-bit ones."""
    (header_size,) = struct.unpack_from("<I", data, 14)
    if header_size == _BMP_CORE_HEADER:
        width, height = struct.unpack_from("<HH", data, 18)
        return int(width), int(height)
    width, height = struct.unpack_from("<ii", data, 18)
    return abs(int(width)), abs(int(height))  # NOTE: a negative height is a top-down bitmap


def _gif_size(data: ImageData) -> tuple[int, int] | None:
    """The logical screen, grown to hold the first frame as Pillow grows it (a 1x1 screen can hold a frame of
    65535 x 65535); None when the first frame's descriptor is not within a fixed number of blocks."""
    screen_width, screen_height, flags = struct.unpack_from("<HHB", data, 6)
    offset = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # NOTE: past the global colour table
    in_extension = False
    for _ in range(_GIF_MAX_BLOCKS):  # NOTE: blocks and an extension's sub-blocks alike
        byte = data[offset : offset + 1]
        if not byte:
            return None
        if in_extension:  # NOTE: a data sub-block: its size, then as many bytes; an empty one ends it
            in_extension = byte[0] != 0
            offset += 1 + byte[0]
        elif byte == b",":  # NOTE: the first image descriptor: left, top, width, height
            left, top, width, height = struct.unpack_from("<HHHH", data, offset + 1)
            return max(int(screen_width), int(left + width)), max(int(screen_height), int(top + height))
        elif byte == b"!":  # NOTE: an extension: its label, then its sub-blocks
            in_extension = True
            offset += 2
        else:
            return None
    return None


def _webp_size(data: ImageData) -> tuple[int, int] | None:
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


def _jpeg_size(data: ImageData) -> tuple[int, int] | None:
    """The size in the last SOFn segment before the first scan, as Pillow takes it (the markers walked as
    Pillow walks them, for at most a fixed number of segments)."""
    frame = _jpeg_frame(data)
    return None if frame is None else frame[0]


def jpeg_coefficient_bytes(data: ImageData) -> int | None:
    """What libjpeg holds, beside the decoded image, while it decodes this (untrusted) JPEG: the DCT
    coefficients of the whole image, 2 bytes each at full resolution however reduced the scale it is decoded
    at, when its scans do not deliver each block in one pass (progressive, or a first scan that leaves out
    components), else 0; None when the header cannot be read this far."""
    frame = _jpeg_frame(data)
    if frame is None:
        return None
    (width, height), progressive, sampling, first_scan = frame
    if not sampling or (not progressive and first_scan >= len(sampling)):
        return 0
    most_h = max(h for h, _ in sampling)
    most_v = max(v for _, v in sampling)
    total = 0
    for h, v in sampling:  # NOTE: libjpeg's per-component arrays, rounded up to whole MCUs
        columns = _ceil(_ceil(width * h, most_h), 8)
        rows = _ceil(_ceil(height * v, most_v), 8)
        total += _ceil(columns, h) * h * _ceil(rows, v) * v * 64 * 2
    return total


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


_JpegFrame = tuple[tuple[int, int], bool, list[tuple[int, int]], int]
"""Size, progressive, each component's sampling factors (h, v), and the components in the first scan."""


def _jpeg_frame(data: ImageData) -> _JpegFrame | None:
    """The last frame header before the first scan (see :func:`_jpeg_size`), and that scan's components."""
    offset = 2
    frame: _JpegFrame | None = None
    for _ in range(_JPEG_MAX_SEGMENTS):
        if data[offset : offset + 1] != b"\xff":
            return None  # NOTE: Pillow skips junk between segments, a byte at a time: not followed here
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
        if code not in _JPEG_SEGMENTS:
            return None
        (length,) = struct.unpack_from(">H", data, offset + 2)
        if code in _JPEG_FRAMES:
            height, width, count = struct.unpack_from(">HHB", data, offset + 5)
            factors = data[offset + 10 : offset + 10 + 3 * count]
            sampling = [(max(1, b >> 4), max(1, b & 15)) for b in factors[1::3]]
            # NOTE: each frame header replaces the one before, as in Pillow
            frame = (int(width), int(height)), code in _JPEG_PROGRESSIVE, sampling, len(sampling)
        if code == 0xDA:  # NOTE: the first scan: Pillow reads no further header
            if frame is None:
                return None
            (in_scan,) = struct.unpack_from(">B", data, offset + 4)
            return frame[0], frame[1], frame[2], int(in_scan)
        offset += 2 + max(int(length), 2)  # NOTE: Pillow reads a length under 2 as an empty segment
    return None
