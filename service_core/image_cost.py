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

from shared.image_headers import declared_size, jpeg_coefficient_bytes, signature_format
from shared.images import ImageLimits, decoded_size

__all__ = ["BYTES_PER_PIXEL", "WEBP_DECODER_BYTES_PER_PIXEL", "images_cost"]

_SIGNED = frozenset({"PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"})
"""The formats :func:`shared.image_headers.signature_format` recognizes."""

BYTES_PER_PIXEL = 4
"""A request's memory per decoded pixel: its RGB images, which Pillow holds in 4 bytes a pixel (measured: 4.0
for a batch of eight 9-megapixel PNGs, peak RSS growth of a real edge; tests/e2e/test_hardening.py).
Converting one image to RGB peaks higher for a moment, in a decode worker: 12 bytes a pixel with alpha, 8
for 16 bits (tests/unit/shared/test_decode_memory.py)."""


WEBP_DECODER_BYTES_PER_PIXEL = 12
"""What Pillow's WebP decoder holds per pixel of the canvas while a WebP decodes, beside the image: libwebp's
two RGBA canvases (its animation decoder's, which Pillow uses for every WebP) and the frame copied out of
them (a 9-megapixel WebP priced at 36 MB peaked at 148)."""


def images_cost(blobs: Sequence[bytes], limits: ImageLimits, resize_size: int) -> int:
    """The bytes a request with these (untrusted) images costs to decode and hold: their decoded pixels, and
    the most that decoding one of them holds beside them (they decode one after another): a progressive
    JPEG's coefficients, 2 bytes a pixel per component at full resolution, decoded at a reduced scale or not
    (a 1.3 MB progressive JPEG of 40 megapixels priced at its 10 MB quarter scale took 250 MB to decode), a
    WebP's decoder buffers (:data:`WEBP_DECODER_BYTES_PER_PIXEL`).
    An image whose header this parser cannot read costs the most an image may (``max_pixels``); a request
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
            continue
        width, height = size
        if width * height > limits.max_pixels:
            return 0
        declared += width * height
        decoded_width, decoded_height = decoded_size(kind, width, height, resize_size)
        decoded += decoded_width * decoded_height
        if kind == "JPEG":
            scratch = max(scratch, jpeg_coefficient_bytes(blob) or 0)
        elif kind == "WEBP":
            scratch = max(scratch, width * height * WEBP_DECODER_BYTES_PER_PIXEL)
    if declared > limits.max_batch_pixels:
        return 0
    return decoded * BYTES_PER_PIXEL + scratch
