"""The decode budget: what a payload's header says it decodes to, and when a reservation is refused."""

from __future__ import annotations

import json
import struct
import tracemalloc
import zlib

import pytest
import torch

from cloud_service.decode_budget import WORKING_SET, decode_cost
from cloud_service.runtime import CloudModel
from service_core.decode_budget import DecodeBudget
from service_core.image_cost import GREY_CONVERSION_BYTES_PER_PIXEL, images_cost
from shared.errors import InvalidTensor, MalformedPayload, ServiceUnavailable
from shared.models import load_model
from shared.protocol import expected_images, image_blobs
from shared.wire import decode_read_payload, encode_payload
from tests.support.images import png_bytes_of_size

MIB = 1024 * 1024


def _metadata(codec: str, shape: list[int], kind: str = "activations") -> dict[str, str]:
    dtype = "float32" if kind != "image" else "int64" if len(shape) == 1 else "uint8"
    return {"kind": kind, "codec": codec, "tensors": json.dumps([{"name": "x", "dtype": dtype, "shape": shape}])}


@pytest.mark.parametrize(
    ("codec", "factor"),
    [("dct50+ans", WORKING_SET["dct"]), ("int2+ans", 3), ("int8+zstd", 3), ("int4", 3), ("fp16", 2), ("fp32", 2)],
)
def test_a_payload_costs_what_it_declares_times_its_decoders_working_set(codec: str, factor: int) -> None:
    assert decode_cost(_metadata(codec, [32, 64, 112, 112]), 512 * MIB, 32, 224) == 32 * 64 * 112 * 112 * 4 * factor


@pytest.mark.parametrize("shape", [[16], [16, 3, 224, 224]], ids=["image_sizes", "pixels"])
def test_images_cost_their_normalized_crops(shape: list[int]) -> None:
    metadata = _metadata("image", shape, kind="image")
    assert decode_cost(metadata, 512 * MIB, 32, 224) == 16 * 3 * 224 * 224 * 4 * WORKING_SET["image"]


def test_payloads_the_wire_limits_refuse_cost_nothing_here() -> None:
    """Decoding refuses them (413) before it allocates."""
    assert decode_cost(_metadata("int2+ans", [10**12, 10**12]), 512 * MIB, 32, 224) == 0
    assert decode_cost(_metadata("image", [33], kind="image"), 512 * MIB, 32, 224) == 0
    assert decode_cost(_metadata("fp32", [1, 10], kind="logits"), 512 * MIB, 32, 224) == 0


def test_an_unreadable_tensor_list_is_the_clients_mistake() -> None:
    with pytest.raises(MalformedPayload):
        decode_cost({"kind": "activations", "codec": "int2+ans", "tensors": "[{"}, 512 * MIB, 32, 224)


def test_a_reservation_past_the_budget_is_refused_and_a_request_alone_is_admitted() -> None:
    budget = DecodeBudget(100)
    with budget.reserve(1000):  # NOTE: alone: admitted whatever its cost
        with pytest.raises(ServiceUnavailable) as refused, budget.reserve(1):
            pass
        assert refused.value.retry_after == 1
    assert budget.in_use == 0
    with budget.reserve(60), budget.reserve(40), budget.reserve(0):
        assert budget.in_use == 100
    assert budget.in_use == 0


def _image_payload(cloud: CloudModel, blobs: list[bytes], sizes: list[int] | None = None) -> bytes:
    tensors = {
        "image_sizes": torch.tensor(sizes or [len(blob) for blob in blobs], dtype=torch.int64),
        "image_bytes": torch.frombuffer(bytearray(b"".join(blobs)), dtype=torch.uint8),
    }
    return encode_payload(
        tensors, kind="image", model="resnet18", weights=cloud.loaded.digest, cut="input", codec="image"
    )


def test_images_sent_as_files_cost_what_they_decode_to() -> None:
    """Three 40-megapixel PNGs in a 116 KB ``image`` payload decode to 475 MB of RGB: they were priced as
    three normalized crops (1.8 MB each), so eight such requests at once took +986 MiB under a budget that
    counted 43 MB. Now they cost their pixels, priced from their headers as an edge prices its uploads."""
    cloud = CloudModel(load_model("resnet18", "none"))
    crop = 3 * 224 * 224 * 4 * WORKING_SET["image"]
    body = _image_payload(cloud, [png_bytes_of_size(6000, 6600)] * 3)
    assert len(body) < 200_000
    assert cloud.decode_cost(body, cloud.read_header(body)) >= 3 * (6000 * 6600 * 4 + crop)
    body = _image_payload(cloud, [png_bytes_of_size(64, 64)])
    # NOTE: its RGB pixels, and its conversion from greyscale (service_core.image_cost)
    assert cloud.decode_cost(body, cloud.read_header(body)) == crop + 64 * 64 * (4 + GREY_CONVERSION_BYTES_PER_PIXEL)


def test_images_whose_sizes_do_not_add_up_cost_nothing_and_are_refused() -> None:
    cloud = CloudModel(load_model("resnet18", "none"))
    small = png_bytes_of_size(64, 64)
    body = _image_payload(cloud, [small], sizes=[len(small) + 1])
    assert cloud.decode_cost(body, cloud.read_header(body)) == 0
    with pytest.raises(InvalidTensor):
        cloud.decode(body)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_pricing_a_large_image_payload_reads_its_pictures_in_place() -> None:
    """Three 10 MB PNGs (a private chunk after the header makes them large) in a 31 MB body: pricing them read
    their headers from three copies made for it, 94 MB traced at the peak (the container's tensors, the
    pictures joined, each cut out). Now from views of the body: a few KB. The price is the same."""
    cloud = CloudModel(load_model("resnet18", "none"))
    small = png_bytes_of_size(64, 64)
    large = small[:33] + _png_chunk(b"prVt", bytes(10 * MIB)) + small[33:]
    body = _image_payload(cloud, [large] * 3)
    header = cloud.read_header(body)
    tracemalloc.start()
    try:
        cost = cloud.decode_cost(body, header)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024, f"pricing a {len(body) / MIB:.0f} MiB body allocated {peak / MIB:.1f} MiB"
    crop = 3 * 224 * 224 * 4 * WORKING_SET["image"]
    assert cost == 3 * crop + images_cost([large] * 3, cloud.image_limits, cloud.loaded.preprocessor.resize_size)
    common = {"model": "resnet18", "weights": cloud.loaded.digest, "limits": cloud.wire_limits}
    payload = decode_read_payload(body, header, kind="image", expected=expected_images("image", 224), **common)  # type: ignore[arg-type]
    assert image_blobs(payload, cloud.wire_limits) == [large] * 3  # NOTE: what is decoded: copies of each
