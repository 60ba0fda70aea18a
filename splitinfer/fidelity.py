"""The codec fidelity report: payload size, speed and logit error of every codec at one cut."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from shared.codecs import ACTIVATION_CODECS, COMPACT_CODECS, IMAGE_CODECS
from shared.models import LoadedModel
from shared.preprocessing import ImageLimits, decode_image
from shared.protocol import (
    encode_activations,
    encode_images,
    encode_picture,
    expected_for_cut,
    expected_images,
    images_from_payload,
)
from shared.splitting import INPUT_CUT, ModelGraph
from shared.wire import WireLimits, decode_payload

__all__ = ["CodecRow", "codec_report", "default_codecs"]


@dataclass(frozen=True)
class CodecRow:
    codec: str
    bytes_per_image: float
    ratio_to_fp32: float
    ratio_to_jpeg: float
    encode_ms: float
    decode_ms: float
    max_abs_error: float
    relative_l2_error: float
    top1_agreement: float
    top5_agreement: float
    """Mean overlap of the top-5 sets (1.0: identical top-5 classes for every image)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def default_codecs(cut: str) -> list[str]:
    bases = IMAGE_CODECS if cut == INPUT_CUT else ACTIVATION_CODECS
    fixed = [c for base in bases for c in (base, f"{base}+zstd") if not (base == "image" and c.endswith("zstd"))]
    return fixed if cut == INPUT_CUT else fixed + list(COMPACT_CODECS)


def _timed(repeats: int, fn: Any, *args: Any) -> tuple[Any, float]:
    result = fn(*args)
    started = time.perf_counter()
    for _ in range(repeats):
        result = fn(*args)
    return result, (time.perf_counter() - started) * 1000 / repeats


def codec_report(
    loaded: LoadedModel,
    graph: ModelGraph,
    cut_name: str,
    jpegs: Sequence[bytes],
    codecs: Sequence[str] | None = None,
    repeats: int = 3,
    autocast: str = "none",
) -> list[CodecRow]:
    """Measure each codec at ``cut_name`` over ``jpegs`` (the input images, as JPEG bytes). ``ratio_to_jpeg``
    compares a payload with the JPEG (quality 90) of the model's own crop of each image, the picture the
    ``jpeg`` codec sends: what shipping the image instead would cost.

    With ``autocast="bf16"`` the tail runs under bf16 autocast, as the cloud's ``--autocast bf16`` does,
    so the errors include that change too.
    """
    graph.logits_classes()  # NOTE: a model the services would refuse is refused here, saying why
    cut = graph.cut(cut_name)
    head, tail = graph.split(cut)
    images = [decode_image(blob, resize_size=loaded.preprocessor.resize_size) for blob in jpegs]
    batch = loaded.preprocessor.batch(images)
    limits = WireLimits.for_batch(max(len(jpegs), 1), mib_per_item=64)
    # NOTE: what sending the image would cost: the model's own crop as a JPEG (the `jpeg` codec's picture)
    jpeg_bytes = sum(len(encode_picture(loaded.preprocessor.crop(image), "JPEG")) for image in images) / len(images)
    common = {"model": loaded.name, "weights": loaded.digest}
    rows = []
    with torch.inference_mode():
        reference = loaded.module(batch).float()
        shipped = head(batch)
        for codec in codecs or default_codecs(cut.name):
            if cut.name == INPUT_CUT:
                data, encode_ms = _timed(
                    repeats, lambda c=codec: encode_images(jpegs, images, loaded.preprocessor, codec=c, **common)
                )
                expected = expected_images(codec, loaded.preprocessor.crop_size)

                def decode(d: bytes = data, e: Any = expected) -> torch.Tensor:
                    payload = decode_payload(d, kind="image", expected=e, limits=limits, **common)
                    return images_from_payload(payload, loaded.preprocessor, ImageLimits(), limits)

                inputs, decode_ms = _timed(repeats, decode)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast == "bf16"):
                    logits = tail(inputs).float()
            else:
                data, encode_ms = _timed(repeats, lambda c=codec: encode_activations(shipped, cut, codec=c, **common))
                payload, decode_ms = _timed(
                    repeats,
                    lambda d=data: decode_payload(
                        d, kind="activations", expected=expected_for_cut(cut), limits=limits, **common
                    ),
                )
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast == "bf16"):
                    logits = tail(*payload.arguments).float()
            per_image = len(data) / len(jpegs)
            difference = logits - reference
            top5_ref, top5 = reference.topk(5, dim=1).indices, logits.topk(5, dim=1).indices
            overlap = [len(set(a.tolist()) & set(b.tolist())) / 5 for a, b in zip(top5_ref, top5, strict=True)]
            rows.append(
                CodecRow(
                    codec=codec,
                    bytes_per_image=per_image,
                    ratio_to_fp32=per_image / max(cut.bytes_fp32, 1),
                    ratio_to_jpeg=per_image / jpeg_bytes,
                    encode_ms=encode_ms,
                    decode_ms=decode_ms,
                    max_abs_error=float(difference.abs().max()),
                    relative_l2_error=float(difference.norm() / reference.norm().clamp_min(1e-12)),
                    top1_agreement=float((logits.argmax(1) == reference.argmax(1)).float().mean()),
                    top5_agreement=sum(overlap) / len(overlap),
                )
            )
    return rows
