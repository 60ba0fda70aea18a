"""What edge and cloud send each other, built on :mod:`shared.wire`: activations, images and logits."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as F

from shared.codecs import IMAGE_CODECS, parse_codec_name
from shared.errors import InvalidImage, InvalidTensor
from shared.preprocessing import ImageLimits, ImagePreprocessor, decode_images
from shared.splitting import INPUT_CUT, Cut
from shared.values import ValueSpec
from shared.wire import (
    BATCH,
    ExpectedTensor,
    Payload,
    PerItem,
    WireHeader,
    WireLimits,
    WireValue,
    encode_payload,
    stored_view,
)

__all__ = [
    "JPEG_QUALITY",
    "DecodedImages",
    "decode_image_payload",
    "encode_picture",
    "encode_activations",
    "encode_images",
    "encode_logits",
    "expected_for_cut",
    "expected_images",
    "image_blobs",
    "image_blob_views",
    "expected_logits",
    "images_from_payload",
]

JPEG_QUALITY = 90


def expected_for_cut(cut: Cut) -> list[ExpectedTensor | ValueSpec]:
    """What crosses ``cut``: batch-first tensors (``per_item`` rows per item), then non-tensor values."""
    tensors: list[ExpectedTensor | ValueSpec] = [
        ExpectedTensor(t.name, t.dtype, (BATCH if t.per_item == 1 else PerItem(t.per_item), *t.shape[1:]))
        for t in cut.tensors
    ]
    return [*tensors, *cut.values]


def expected_images(codec: str, crop_size: int) -> list[ExpectedTensor]:
    base, _ = parse_codec_name(codec, IMAGE_CODECS)
    if base == "uint8":
        return [ExpectedTensor("pixels", torch.uint8, (BATCH, 3, crop_size, crop_size))]
    return [
        ExpectedTensor("image_sizes", torch.int64, (BATCH,)),
        ExpectedTensor("image_bytes", torch.uint8, (None,)),
    ]


def expected_logits(num_classes: int) -> list[ExpectedTensor]:
    return [ExpectedTensor("logits", torch.float32, (BATCH, num_classes))]


def encode_activations(
    outputs: Sequence[torch.Tensor | WireValue], cut: Cut, *, model: str, weights: str, codec: str
) -> bytes:
    """What the head returned (the cut's tensors, then its non-tensor values) as an activations payload."""
    n_tensors = len(cut.tensors)
    if len(outputs) != n_tensors + len(cut.values):
        raise ValueError(
            f"cut {cut.name!r} ships {n_tensors} tensors and {len(cut.values)} values, got {len(outputs)} outputs"
        )
    named: dict[str, torch.Tensor] = {}
    for spec, tensor in zip(cut.tensors, outputs[:n_tensors], strict=True):
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"cut {cut.name!r}: {spec.name!r} is a {type(tensor).__name__}, not a tensor")
        named[spec.name] = tensor
    values = {v.name: value for v, value in zip(cut.values, outputs[n_tensors:], strict=True)}
    return encode_payload(
        named,
        kind="activations",
        model=model,
        weights=weights,
        cut=cut.name,
        codec=codec,
        values=values,  # type: ignore[arg-type]
    )


def encode_logits(logits: torch.Tensor, *, model: str, weights: str, cut: str) -> bytes:
    return encode_payload(
        {"logits": logits.float()}, kind="logits", model=model, weights=weights, cut=cut, codec="fp32"
    )


def encode_picture(image: Image.Image, fmt: str) -> bytes:
    """``image`` as the ``jpeg`` (quality ``JPEG_QUALITY``) or ``png`` image codec ships it."""
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def encode_images(
    raw: Sequence[bytes],
    images: Sequence[Image.Image],
    preprocessor: ImagePreprocessor,
    *,
    model: str,
    weights: str,
    codec: str,
) -> bytes:
    """The ``input`` cut: ship the images as received (``image``), or cropped as PNG, JPEG or raw pixels."""
    base, _ = parse_codec_name(codec, IMAGE_CODECS)
    tensors: dict[str, torch.Tensor]
    if base == "uint8":
        tensors = {"pixels": torch.stack([F.pil_to_tensor(preprocessor.crop(image)) for image in images])}
    else:
        if base == "image":
            blobs = list(raw)
        else:
            blobs = [encode_picture(preprocessor.crop(image), base.upper()) for image in images]
        tensors = {
            "image_sizes": torch.tensor([len(b) for b in blobs], dtype=torch.int64),
            "image_bytes": torch.frombuffer(bytearray(b"".join(blobs)), dtype=torch.uint8)
            if any(blobs)
            else torch.empty(0, dtype=torch.uint8),
        }
    return encode_payload(tensors, kind="image", model=model, weights=weights, cut=INPUT_CUT, codec=codec)


class DecodedImages(NamedTuple):
    """An ``image`` payload decoded: the model's input batch, and how many pixels were decoded for it."""

    batch: torch.Tensor
    pixels: int
    """The decoded pictures' pixels together (codec ``uint8``: the pixels sent); they are freed once the
    batch is made, and a service trims its heap after large ones (service_core.heap)."""


def images_from_payload(
    payload: Payload, preprocessor: ImagePreprocessor, limits: ImageLimits, wire_limits: WireLimits
) -> torch.Tensor:
    """Decode an ``image`` payload into the model's normalized input batch."""
    return decode_image_payload(payload, preprocessor, limits, wire_limits).batch


def image_blobs(payload: Payload, wire_limits: WireLimits) -> list[bytes]:
    """The encoded pictures of an ``image`` payload whose codec ships files (not ``uint8``), one per image,
    their sizes checked (:class:`InvalidTensor`): each copied once out of the payload (to be decoded)."""
    sizes, blob = payload.tensors
    views = _split_images(sizes.numpy(), blob.numpy().data, wire_limits)
    return [bytes(view) for view in views]


def image_blob_views(body: bytes, header: WireHeader, wire_limits: WireLimits) -> list[memoryview]:
    """The encoded pictures of an ``image`` payload's ``body`` (codec ``image``, no compression stage; its
    header read: ``header``) as views of ``body``, their sizes checked (:class:`InvalidTensor`): what reads only
    their headers (pricing them, service_core.image_cost) copies nothing. A body of three 10 MB pictures
    was copied three times to be priced (the container's tensors, the pictures joined, then each cut out)."""
    sizes = np.frombuffer(stored_view(body, header, "image_sizes", torch.int64), dtype="<i8")
    return _split_images(sizes, stored_view(body, header, "image_bytes", torch.uint8), wire_limits)


def _split_images(sizes: np.ndarray, data: memoryview, wire_limits: WireLimits) -> list[memoryview]:
    """``data`` cut into pictures of ``sizes`` bytes (views), refused unless the sizes add up to it."""
    if sizes.size > wire_limits.max_batch:
        raise InvalidTensor(f"{sizes.size} images exceed the batch limit {wire_limits.max_batch}")
    # NOTE: each size checked before they are summed: int64 sums of untrusted sizes can wrap around.
    counts = [int(size) for size in sizes.tolist()]
    if any(size < 0 or size > len(data) for size in counts) or sum(counts) != len(data):
        raise InvalidTensor(f"image sizes {counts[:8]} do not add up to the {len(data)} bytes sent")
    views, offset = [], 0
    for size in counts:
        views.append(data[offset : offset + size])
        offset += size
    return views


def decode_image_payload(
    payload: Payload, preprocessor: ImagePreprocessor, limits: ImageLimits, wire_limits: WireLimits
) -> DecodedImages:
    """:func:`images_from_payload`, with the number of pixels decoded."""
    base, _ = parse_codec_name(payload.codec, IMAGE_CODECS)
    if base == "uint8":
        pixels = payload.tensors[0]  # NOTE: (batch, 3, crop, crop), as expected_images says
        return DecodedImages(torch.stack([preprocessor.finish(item) for item in pixels]), pixels.numel() // 3)
    blobs = image_blobs(payload, wire_limits)
    if base == "image":
        images = decode_images(blobs, limits, resize_size=preprocessor.resize_size)
        batch = [preprocessor(image) for image in images]
    else:
        # NOTE: the crop itself: any other size is refused from its header, before it is decoded
        crop = (preprocessor.crop_size, preprocessor.crop_size)
        try:
            images = decode_images(blobs, limits, size=crop)
        except InvalidImage as exc:
            raise InvalidImage(f"a {base} image of the input cut: {exc.detail}") from exc
        batch = [preprocessor.finish(image) for image in images]
    return DecodedImages(torch.stack(batch), sum(image.width * image.height for image in images))
