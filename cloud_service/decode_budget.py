"""What a request payload costs the cloud's decode budget (service_core.decode_budget), from its header.

Admission (service_core.admission) bounds the *bodies* in flight, but a small body can decode to a whole
batch: a compact codec's few KiB (``int2+ans`` or ``dct50+ans`` of near-zero activations) to a batch of
float32 activations, up to the wire limit's ``max_decoded_bytes``; 32 tiny JPEGs (20 KiB) to 32 normalized
crops (19 MiB at 224). The decoded tensors then wait for the tail in the batcher's queue, which counts
requests, not bytes. Each request therefore reserves what its payload declares it decodes to, times the
decoder's measured working set (:func:`decode_cost`), from the moment its header is read until it is
answered; past the budget it gets 503 + Retry-After before anything is decoded. A request alone is always
admitted, so the budget never refuses a payload the wire limits accept.
"""

from __future__ import annotations

from collections.abc import Mapping

from shared.wire import declared_tensors

__all__ = ["WORKING_SET", "decode_cost"]

WORKING_SET = {"dct": 8, "compact": 3, "cast": 2, "image": 3}
"""Peak memory of decoding a payload, per byte of the float32 tensors it decodes to (measured: ``dct50+ans``
7.1, ``int2+ans`` 2.6, ``int8+zstd`` 2.3, 32 JPEGs 2.5 to 3.5; bench/results/hostile_payloads.json)."""


def decode_cost(metadata: Mapping[str, str], max_decoded_bytes: int, max_batch: int, crop_size: int) -> int:
    """The bytes a payload with this header ``metadata`` costs to decode and hold. A header that declares more
    than the wire limits accept (``max_decoded_bytes``, ``max_batch`` images) costs nothing: decoding refuses
    it (413) before it allocates."""
    kind = metadata.get("kind")
    tensors = declared_tensors(metadata)
    if kind == "image":
        images = tensors[0][2][0] if tensors and tensors[0][2] else 0
        return images * 3 * crop_size * crop_size * 4 * WORKING_SET["image"] if images <= max_batch else 0
    if kind != "activations":
        return 0
    declared = 0
    for _, dtype, shape in tensors:
        count = 1
        for size in shape:
            count *= size
        declared += count * dtype.itemsize
    if declared > max_decoded_bytes:
        return 0
    codec = metadata.get("codec", "")
    if codec.startswith("dct"):
        return declared * WORKING_SET["dct"]
    if "+" in codec or codec.startswith("int"):
        return declared * WORKING_SET["compact"]
    return declared * WORKING_SET["cast"]
