"""What a request's images cost an edge's decode budget (service_core.decode_budget), read from their
headers before any is decoded. Torch-free: both the torch edge (edge_service) and the torch-free one
(edge_lite) price their requests with it.

A few-KB PNG can declare 40 megapixels, and a batch up to ``MAX_BATCH_PIXELS`` together: decoded, that is
up to 360 MB of RGB per request, held until the head has run (at cut ``input`` until the cloud answers:
the fallback there runs the model on the decoded images). Admission bounds bodies and requests in flight, not what
they decode to; each request therefore reserves its images' decoded pixels times :data:`BYTES_PER_PIXEL`.
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.image_headers import (
    ImageData,
    declared_size,
    is_grey_or_palette,
    jpeg_coefficient_bytes,
    signature_format,
    tiff_tile_pixels,
)
from shared.images import ImageLimits, decoded_size

__all__ = [
    "BYTES_PER_PIXEL",
    "CONVERSION_BYTES_PER_PIXEL",
    "GREY_CONVERSION_BYTES_PER_PIXEL",
    "TIFF_DECODER_BYTES_PER_PIXEL",
    "WEBP_DECODER_BYTES_PER_PIXEL",
    "images_cost",
]

_SIGNED = frozenset({"PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"})
"""The formats :func:`shared.image_headers.signature_format` recognizes."""

BYTES_PER_PIXEL = 4
"""A request's memory per decoded pixel: its RGB images, which Pillow holds in 4 bytes a pixel (measured: 4.0
for a batch of eight 9-megapixel PNGs, peak RSS growth of a real edge; tests/e2e/test_hardening.py)."""

CONVERSION_BYTES_PER_PIXEL = 4
"""What making one image upright 8-bit RGB holds per pixel beside that RGB image, for a moment (a request's
images decode one after another: its largest is priced). The rule, for every mode Pillow decodes an accepted
format to (1, L, P, P with a transparent colour, LA, PA, RGB, RGBA, CMYK, YCbCr, I;16, I, F; tests/unit/
shared/test_decode_memory.py and tests/unit/edge/test_decode_cost.py measure them in fresh processes):
Pillow holds the decoded image in at most 4 bytes a pixel (1, L, P: 1; I;16: 2; the others 4), and
:func:`shared.images.decode_images` holds at most two copies at once, each closed once the next is made:
the RGB one and what it is made from, or the RGB one and its upright copy (EXIF orientation 2 to 8, which no
header read here tells); a conversion that would hold more (compositing alpha over white, scaling 16 bits
or floats to 8) goes in bands of rows. So 8 bytes a pixel at the peak, 4 beside the RGB image. Before,
compositing an LA PNG peaked at 16 bytes a pixel, a PNG with a transparent palette colour at 13, RGBA at
12, CMYK or an RGB JPEG turned upright at 8, all priced 4. A decoder's own buffers come on top: a WebP's
(:data:`WEBP_DECODER_BYTES_PER_PIXEL`, held until its file is dropped); a progressive JPEG's coefficients
are freed before the image is converted (the larger of the two is priced)."""

GREY_CONVERSION_BYTES_PER_PIXEL = 2
""":data:`CONVERSION_BYTES_PER_PIXEL` for an image whose header says it decodes to greyscale or a palette
(:func:`shared.image_headers.is_grey_or_palette`): 1 byte a pixel (a 16-bit one is brought to 8 bits in
bands first), turned upright at that size, so the RGB image is made beside 1 byte a pixel; measured at 1 to
1.5 (GIF's and BMP's readers), priced 2."""


WEBP_DECODER_BYTES_PER_PIXEL = 12
"""What Pillow's WebP decoder holds per pixel of the canvas while a WebP decodes, beside the image: libwebp's
two RGBA canvases (its animation decoder's, which Pillow uses for every WebP) and the frame copied out of
them (a 9-megapixel WebP priced at 36 MB peaked at 148)."""

TIFF_DECODER_BYTES_PER_PIXEL = 8
"""What Pillow's TIFF decoder holds per pixel beside the image while it decodes: a strip (or tile) of the
image's raw samples, the whole image when its writer made one strip (a tile, which may be larger than the image, is
priced at its own size: shared.image_headers.tiff_tile_pixels), at most 8 bytes a pixel in the modes
Pillow opens (16-bit RGBA or CMYK: a 3-megapixel 16-bit RGBA TIFF in one strip peaked at 12 bytes a pixel
with its 4-byte image). Freed before the image is converted (the larger of the two is priced)."""

_UNKNOWN_SCRATCH_BYTES_PER_PIXEL = CONVERSION_BYTES_PER_PIXEL + WEBP_DECODER_BYTES_PER_PIXEL
"""Beside an image whose header is not read here, the most any decoder and the conversion hold."""


def images_cost(blobs: Sequence[ImageData], limits: ImageLimits, resize_size: int) -> int:
    """The bytes a request with these (untrusted) images costs to decode and hold: their decoded pixels, and
    the most that decoding one of them holds beside them (they decode one after another): a progressive
    JPEG's coefficients, 2 bytes a pixel per component at full resolution, decoded at a reduced scale or not
    (a 1.3 MB progressive JPEG of 40 megapixels priced at its 10 MB quarter scale took 250 MB to decode), a
    WebP's decoder buffers (:data:`WEBP_DECODER_BYTES_PER_PIXEL`), beside the conversion to RGB
    (:data:`CONVERSION_BYTES_PER_PIXEL`).
    An image whose header this parser cannot read costs the most an image may (``max_pixels``, with a WebP's
    buffers); a request
    that the image limits refuse from its headers (413: an image over ``max_pixels``, or more than
    ``max_batch_pixels`` together) costs nothing, since it is refused before anything is decoded."""
    declared = decoded = scratch = 0
    for blob in blobs:
        kind = signature_format(blob)
        if kind is None or kind not in limits.formats:
            # NOTE: refused (415) before decoding, unless an accepted format has no signature known here
            decoded += 0 if set(limits.formats) <= _SIGNED else limits.max_pixels
            continue
        size = declared_size(kind, blob)
        if size is None:
            decoded += limits.max_pixels
            scratch = max(scratch, limits.max_pixels * _UNKNOWN_SCRATCH_BYTES_PER_PIXEL)
            continue
        width, height = size
        if width * height > limits.max_pixels:
            return 0
        declared += width * height
        decoded_width, decoded_height = decoded_size(kind, width, height, resize_size)
        decoded += decoded_width * decoded_height
        per_pixel = GREY_CONVERSION_BYTES_PER_PIXEL if is_grey_or_palette(kind, blob) else CONVERSION_BYTES_PER_PIXEL
        converting = decoded_width * decoded_height * per_pixel
        if kind == "JPEG":  # NOTE: libjpeg frees its coefficients before the image is converted
            scratch = max(scratch, converting, jpeg_coefficient_bytes(blob) or 0)
        elif kind == "WEBP":  # NOTE: libwebp's buffers are held until the file is dropped, after the conversion
            scratch = max(scratch, converting + width * height * WEBP_DECODER_BYTES_PER_PIXEL)
        elif kind == "TIFF":  # NOTE: libtiff decodes a tile whole, and a tile may be larger than the image
            tile = tiff_tile_pixels(blob)
            if tile is None or tile > limits.max_pixels:
                return 0  # NOTE: refused from its header (shared.images), before anything is decoded
            scratch = max(scratch, converting, max(width * height, tile) * TIFF_DECODER_BYTES_PER_PIXEL)
        else:
            scratch = max(scratch, converting)
    if declared > limits.max_batch_pixels:
        return 0
    return decoded * BYTES_PER_PIXEL + scratch
