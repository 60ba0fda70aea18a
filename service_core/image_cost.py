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

from shared.image_headers import declared_size, signature_format
from shared.images import ImageLimits, decoded_size

__all__ = ["BYTES_PER_PIXEL", "images_cost"]

_SIGNED = frozenset({"PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"})
"""The formats :func:`shared.image_headers.signature_format` recognizes."""

BYTES_PER_PIXEL = 4
"""A request's memory per decoded pixel: its RGB images, which Pillow holds in 4 bytes a pixel (measured: 4.0
for a batch of eight 9-megapixel PNGs, peak RSS growth of a real edge; tests/e2e/test_hardening.py).
Converting one image to RGB peaks higher for a moment, in a decode worker: 12 bytes a pixel with alpha, 8
for 16 bits (tests/unit/shared/test_decode_memory.py)."""


def images_cost(blobs: Sequence[bytes], limits: ImageLimits, resize_size: int) -> int:
    """The bytes a request with these (untrusted) images costs to decode and hold. An image whose header this
    parser cannot read costs the most an image may (``max_pixels``); a request that the image limits refuse
    from its headers (413: an image over ``max_pixels``, or more than ``max_batch_pixels`` together) costs
    nothing, since it is refused before anything is decoded."""
    declared = decoded = 0
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
    if declared > limits.max_batch_pixels:
        return 0
    return decoded * BYTES_PER_PIXEL
