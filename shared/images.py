"""Decoding untrusted image bytes with limits (Pillow and numpy only: the torch-free edge uses it as it is).

Every buffer the image path allocates is bounded: the decoded image and its copy resized for the model
(``max_pixels``), and the images of one request together (``max_batch_pixels``, from their headers,
before any is decoded).

A JPEG at least eight times the model's resize size on its short side is decoded at a reduced scale
(libjpeg's 1/2, 1/4 or 1/8: Pillow's ``draft``) that keeps its short side at least :data:`DRAFT_MARGIN`
times that size, so the resize still shrinks it at least fourfold: a 12-megapixel photo
decodes in a quarter of the memory and about half the time, and 36 megapixels in a sixteenth. What the
model sees differs from the full decode by less than re-encoding the photo at another JPEG quality makes it
differ (docs/benchmarks.md, "Decoding large JPEGs").
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from PIL import ExifTags, Image, JpegImagePlugin, UnidentifiedImageError

from shared.errors import InvalidImage, PayloadTooLarge, SplitInferError, UnsupportedMediaType
from shared.image_headers import declared_size, signature_format, tiff_tile_pixels

T = TypeVar("T")

__all__ = [
    "DEFAULT_FORMATS",
    "DRAFT_MARGIN",
    "MAX_NAME_CHARS",
    "ImageLimits",
    "UndecodableImage",
    "check_resize",
    "decode_image",
    "decode_images",
    "decoded_size",
    "display_name",
    "resized_size",
]

DEFAULT_FORMATS = ("JPEG", "PNG", "WEBP")
DRAFT_MARGIN = 4
"""A large JPEG is decoded at a reduced scale only down to this many times the resize size (short side): at
twice, the model's top-1 answer changed on 2 of 16 generated 12-megapixel scenes (docs/benchmarks.md)."""
MAX_NAME_CHARS = 64
"""Most characters of an uploaded file's name quoted back in an error."""


@dataclass(frozen=True)
class ImageLimits:
    """What an image received from the network may be. ``max_pixels`` bounds every buffer the image path
    allocates: the decoded image and the image resized for the model; ``max_batch_pixels`` bounds the
    images of one request together, checked from their headers before any is decoded."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    formats: tuple[str, ...] = DEFAULT_FORMATS
    max_batch_pixels: int = 120_000_000


class UndecodableImage(InvalidImage):
    """An image of a request that failed partway through decoding (truncated or corrupt data: 422, as any
    :class:`InvalidImage`). ``decoded_pixels``: the pixels the request's images had allocated by then, the
    failed image's full buffer included (it is allocated before its data runs out); they are freed when this
    is raised, and a service trims its heap after many (service_core.heap), as after a decoded request."""

    def __init__(self, detail: str, *, decoded_pixels: int = 0) -> None:
        super().__init__(detail)
        self.decoded_pixels = decoded_pixels


# NOTE: PIL's parsers raise many kinds of errors on malformed input (a text or ICC chunk over PIL's
# MAX_TEXT_CHUNK raises ValueError from Image.open); every one is the image's fault.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError, struct.error)
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def resized_size(width: int, height: int, resize_size: int) -> tuple[int, int]:
    """The size torchvision's ``resize(image, [resize_size])`` gives (the shorter side becomes
    ``resize_size``, the longer one keeps the aspect ratio)."""
    if width <= height:
        return resize_size, int(resize_size * height / width)
    return int(resize_size * width / height), resize_size


def check_resize(width: int, height: int, resize_size: int, max_pixels: int) -> None:
    """Refuse (413) an image whose resized copy would exceed ``max_pixels``: a 4000x1 image is small,
    resized to a 256-pixel short side it is 1,024,000x256."""
    new_width, new_height = resized_size(width, height, resize_size)
    if new_width * new_height > max_pixels:
        raise PayloadTooLarge(
            f"the {width}x{height} image resized to a {resize_size}-pixel short side would be "
            f"{new_width}x{new_height} = {new_width * new_height} pixels; the limit is {max_pixels}"
        )


def decoded_size(kind: str, width: int, height: int, resize_size: int | None) -> tuple[int, int]:
    """The size :func:`decode_images` decodes a ``kind`` image (a Pillow format name) of ``width`` x ``height``
    at: a large JPEG's reduced scale (Pillow's ``draft`` arithmetic: the largest of 1/8, 1/4, 1/2 that keeps
    both sides at least ``DRAFT_MARGIN * resize_size``), else its own size."""
    if kind not in ("JPEG", "MPO") or resize_size is None:
        return width, height
    side = DRAFT_MARGIN * resize_size
    fits = min(width // side, height // side)
    scale = next(s for s in (8, 4, 2, 1) if fits >= s or s == 1)
    return (width + scale - 1) // scale, (height + scale - 1) // scale


def _open(data: bytes, limits: ImageLimits) -> Image.Image:
    """Open (headers only) and check the size of one untrusted image."""
    if not data:
        raise InvalidImage("the image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(f"the image is {len(data)} bytes; the limit is {limits.max_bytes}")
    with warnings.catch_warnings():
        # NOTE: PIL warns (DecompressionBombWarning) before our own, stricter pixel check runs.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(_without_png_text(data)), formats=list(limits.formats))
        except UnidentifiedImageError as exc:
            raise _unidentified(data, limits) from exc
        except Image.DecompressionBombError as exc:
            raise PayloadTooLarge(f"image refused as a decompression bomb: {exc}") from exc
        except _DECODE_ERRORS as exc:
            raise _empty_header(data) or InvalidImage(f"the image cannot be read: {str(exc)[:200]}") from exc
    width, height = image.size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"the {image.format} image is {width}x{height} pixels; an image has at least 1x1")
    if width * height > limits.max_pixels:
        raise PayloadTooLarge(
            f"the image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}"
        )
    if image.format == "TIFF":
        _check_tiff_tiles(data, limits)
    return image


def _check_tiff_tiles(data: bytes, limits: ImageLimits) -> None:
    """Refuse a tiled TIFF whose tile is over ``max_pixels`` (413) or not told by its header (422): libtiff
    allocates a whole tile to decode one, and a tile is not bounded by the image (a 1.2 KB TIFF of 16 x 16
    pixels in a 16384 x 16384 tile held 790 MB)."""
    tile = tiff_tile_pixels(data)
    if tile is None:
        raise InvalidImage("the TIFF image's header does not say how large its tiles are (TileWidth, TileLength)")
    if tile > limits.max_pixels:
        raise PayloadTooLarge(f"the TIFF image's tiles are {tile} pixels each; the limit is {limits.max_pixels}")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_TEXT_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt"})
_PNG_RAW_EXIF = b"Raw profile type exif\x00"
"""The keyword of the text chunk in which some writers store EXIF (Pillow reads the orientation from it)."""


def _without_png_text(data: bytes) -> bytes:
    """``data`` without its text chunks when it is a PNG (else as it is). Pillow decompresses every text chunk
    and keeps it, as a string, with the image and every copy of it: up to 64 M characters, 4 bytes each when
    one of them is outside the Basic Multilingual Plane, so a 66 KB PNG of 1x1 pixel held 268 MB (its price:
    4 bytes). Text says nothing about the pixels, but for the EXIF some writers store in a text chunk, which is
    kept (Pillow keeps one such chunk's text at a time: each replaces the one before)."""
    if not data.startswith(_PNG_SIGNATURE):
        return data
    kept: list[bytes] = []
    start, offset = 0, len(_PNG_SIGNATURE)
    while offset + 12 <= len(data):  # NOTE: bounded: each round moves past one whole chunk
        length, kind = struct.unpack_from(">I4s", data, offset)
        end = offset + 12 + length
        if end > len(data) or kind == b"IEND":
            break  # NOTE: a truncated chunk, or the end: left to Pillow as they are
        if kind in _PNG_TEXT_CHUNKS and not data.startswith(_PNG_RAW_EXIF, offset + 8):
            kept.append(data[start:offset])
            start = end
        offset = end
    if not kept:
        return data
    kept.append(data[start:])
    return b"".join(kept)


def _unidentified(data: bytes, limits: ImageLimits) -> SplitInferError:
    """What Pillow could not identify is not an image in an accepted format (415), unless it starts with the
    signature of one: then it is a malformed image of that format (422), for example a PNG 0 pixels wide."""
    kind = signature_format(data)
    if kind is None or kind not in limits.formats:
        return UnsupportedMediaType(f"not an image in an accepted format ({', '.join(limits.formats)})")
    return _empty_header(data) or InvalidImage(f"the {kind} image cannot be read: its header is malformed")


def _empty_header(data: bytes) -> InvalidImage | None:
    """The refusal of an image whose header declares a width or height of 0, if it does."""
    kind = signature_format(data)
    size = declared_size(kind, data) if kind is not None else None
    if size is None or min(size) > 0:
        return None
    return InvalidImage(
        f"the {kind} image's header says it is {size[0]} pixels wide and {size[1]} high; it needs at least 1 of each"
    )


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
"""What turns an image with each EXIF orientation upright (as ``ImageOps.exif_transpose``)."""
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_ONE_BYTE_MODES = ("1", "L", "P")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Upright 8-bit RGB: EXIF orientation applied, 16-bit scaled (not clipped) to 8 bits, alpha composited
    over white (not dropped: what is under a transparent pixel is arbitrary). ``image`` (loaded) is closed:
    each copy is closed as soon as the next is made, so that at most two are held at once, the RGB one and
    what it is made from (at most 4 bytes a pixel in every mode Pillow decodes to), or the RGB one and its
    upright copy: 8 bytes a pixel; a 1-byte image (1, L, P, or 16 bits once scaled) is turned upright before
    it becomes RGB: 5. What :mod:`service_core.image_cost` prices (CONVERSION_BYTES_PER_PIXEL; measured for
    every format and mode in tests/unit/shared/test_decode_memory.py and tests/unit/edge/test_decode_cost.py)."""
    method = _TRANSPOSE.get(image.getexif().get(ExifTags.Base.Orientation, 1))
    if image.mode in _SIXTEEN_BIT_MODES:
        # NOTE: convert("RGB") clips a 16-bit value to 255 (an almost white image); scale it instead.
        image = _replacing(
            image, _to_eight_bits(image, lambda band: (np.clip(band.astype(np.int64), 0, 65535) + 128) // 257)
        )
    elif image.mode == "F":
        image = _replacing(image, _to_eight_bits(image, lambda band: np.clip(band, 0, 255)))
    if method is not None and image.mode in _ONE_BYTE_MODES:
        # NOTE: turned upright while it takes 1 byte a pixel, not once it is RGB (4 bytes, twice)
        image, method = _replacing(image, image.transpose(method)), None
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        rgb = _replacing(image, _composited(image))
    elif image.mode == "RGB":
        rgb = _replacing(image, image._new(image.im))  # NOTE: a plain image sharing the file's pixels
    else:
        rgb = _replacing(image, image.convert("RGB"))
    if method is not None:
        rgb = _replacing(rgb, rgb.transpose(method))
    rgb.info = {}  # NOTE: upright now: an orientation left in its metadata would turn it again
    return rgb


def _replacing(old: Image.Image, new: Image.Image) -> Image.Image:
    """``new``, once ``old`` is closed (its pixels freed, unless ``new`` shares them)."""
    old.close()
    return new


_BAND_PIXELS = 1 << 16
"""Pixels converted at a time where a whole-image conversion would hold more than the image and its RGB copy
(a 16-bit, float or transparent image): its temporaries stay within a few hundred KB."""


def _composited(image: Image.Image) -> Image.Image:
    """``image`` (with alpha, or a palette with a transparent colour) composited over white, as RGB: in bands
    of rows, so that nothing but the RGB copy is held beside it (whole, the RGBA copy, a white background and
    the composite took 12 to 16 bytes a pixel, 3 to 4 times the price of the RGB image)."""
    width, height = image.size
    rgb = Image.new("RGB", image.size)
    rows = max(1, _BAND_PIXELS // width)
    for top in range(0, height, rows):
        rgba = image.crop((0, top, width, min(height, top + rows))).convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb.paste(Image.alpha_composite(white, rgba).convert("RGB"), (0, top))
    return rgb


def _to_eight_bits(image: Image.Image, scale: Callable[[np.ndarray], np.ndarray]) -> Image.Image:
    """``image`` as 8-bit ``L``: ``scale`` maps each band of rows (a NumPy array of its values) to 0..255."""
    width, height = image.size
    out = np.empty((height, width), dtype=np.uint8)
    rows = max(1, _BAND_PIXELS // width)
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        out[top:bottom] = scale(np.asarray(image.crop((0, top, width, bottom))))
    return Image.fromarray(out, mode="L")


def _load(image: Image.Image, resize_size: int | None) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            # NOTE: MPO (a phone's JPEG with a second picture, such as an Ultra HDR gain map) is a JPEG too.
            if resize_size is not None and isinstance(image, JpegImagePlugin.JpegImageFile):
                # NOTE: a no-op unless both sides are at least twice the request (see the module docstring).
                side = DRAFT_MARGIN * resize_size
                image.draft(image.mode, (side, side))
            image.load()
            # NOTE: an opened file keeps what its decoder allocated for as long as it lives (a WebP's two
            # libwebp canvases and a copy of its frame: 12 bytes a pixel beside the image's 4): the image
            # returned is a plain one, the file is closed, and dropped by the caller.
            return _to_rgb(image)
        except (*_DECODE_ERRORS, Image.DecompressionBombError) as exc:
            raise InvalidImage(f"the {image.format} image cannot be decoded: {str(exc)[:200]}") from exc


def decode_image(data: bytes, limits: ImageLimits = ImageLimits(), *, resize_size: int | None = None) -> Image.Image:
    """Decode untrusted image bytes into an upright 8-bit RGB PIL image, refusing bombs and unknown formats.

    With ``resize_size``, also refuse (before decoding) an image whose copy resized for the model would
    exceed the pixel limit, and decode a large JPEG at a reduced scale (see the module docstring).
    """
    return decode_images([data], limits, resize_size=resize_size)[0]


def decode_images(
    blobs: Sequence[bytes],
    limits: ImageLimits = ImageLimits(),
    *,
    resize_size: int | None = None,
    names: Sequence[str | None] | None = None,
    size: tuple[int, int] | None = None,
) -> list[Image.Image]:
    """Decode the images of one request: every one's size is checked from its header, and their pixels
    summed against ``max_batch_pixels``, before the first is decoded. ``names`` (the uploaded file names,
    untrusted) only make a refusal clearer: ``image 3 ("cat.png") (0-based) of 5: ...``. ``size``: what
    every image must measure (width, height), else :class:`InvalidImage`."""
    count = len(blobs)
    given = list(names or ())[:count]
    labels = [_label(index, count, given[index] if index < len(given) else None) for index in range(count)]
    opened = [_naming(labels[index], _open, blob, limits) for index, blob in enumerate(blobs)]
    total = 0
    for index, image in enumerate(opened):
        width, height = image.size
        total += width * height
        if size is not None:
            _naming(labels[index], _check_size, image.size, size)
        if resize_size is not None:
            _naming(labels[index], check_resize, width, height, resize_size, limits.max_pixels)
    if total > limits.max_batch_pixels:
        raise PayloadTooLarge(
            f"the {len(opened)} images have {total} pixels together; the limit is {limits.max_batch_pixels}"
        )
    decoded: list[Image.Image] = []
    failure: str | None = None
    opened.reverse()
    while opened:
        # NOTE: each file is dropped once decoded (its pixels, and its decoder's buffers, are not held while
        # the next images decode)
        image = opened.pop()
        try:
            decoded.append(_naming(labels[len(decoded)], _load, image, resize_size))
        except InvalidImage as exc:
            failure = exc.detail
            opened.append(image)
            break
        del image
    if failure is None:
        return decoded
    # NOTE: the failed image's size is its draft's (a JPEG decoded at a reduced scale allocates that much).
    pixels = sum(image.width * image.height for image in (*decoded, opened[-1]))
    for image in (*decoded, *opened):
        image.close()  # NOTE: and raised outside the handler: no traceback keeps the decoder, and its buffer, alive
    raise UndecodableImage(failure, decoded_pixels=pixels)


def display_name(name: str) -> str:
    """An untrusted file name made safe to quote: its last path component, every character that is not
    printable (controls, bidi and zero-width marks) or is a quote or backslash replaced by ``_``, at most
    :data:`MAX_NAME_CHARS` characters (longer names end in ``...``)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1][: 4 * MAX_NAME_CHARS]
    cleaned = "".join(c if c.isprintable() and c not in '"\\' else "_" for c in base)
    return cleaned if len(cleaned) <= MAX_NAME_CHARS else cleaned[: MAX_NAME_CHARS - 3] + "..."


def _label(index: int, count: int, name: str | None) -> str | None:
    """How a refusal names image ``index`` of ``count``: nothing for a single image, else its position and,
    when it was uploaded with one, its file name."""
    if count == 1:
        return None
    shown = display_name(name) if name else ""
    quoted = f' ("{shown}")' if shown else ""
    return f"image {index}{quoted} (0-based) of {count}"


def _check_size(got: tuple[int, int], size: tuple[int, int]) -> None:
    if got != size:
        raise InvalidImage(f"the image must be {size[0]}x{size[1]} pixels; it is {got[0]}x{got[1]}")


def _naming(label: str | None, step: Callable[..., T], *args: Any) -> T:
    """``step(*args)``; a refusal is prefixed with the image's ``label`` (in a batch: its position and name)."""
    try:
        return step(*args)
    except SplitInferError as exc:
        if label is None:
            raise
        raise type(exc)(f"{label}: {exc.detail}") from exc
