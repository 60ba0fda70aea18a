"""Issue 14, image decoding: pixel limits for every buffer, chunk bombs, real photos, image payload sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.errors import InvalidImage, InvalidTensor, PayloadTooLarge
from shared.preprocessing import ImageLimits, ImagePreprocessor, decode_image
from shared.protocol import images_from_payload
from shared.wire import Payload, WireLimits
from tests.support.images import icc_chunk_bomb, photo_variants, png_bytes_of_size, text_chunk_bomb

PRE = ImagePreprocessor()


def test_2_an_image_whose_resized_copy_is_over_the_limit_is_refused_before_decoding() -> None:
    from shared.preprocessing import decode_images  # noqa: F401  (new: these tests also run on old code)

    thin = png_bytes_of_size(4000, 1)  # 4000 pixels; resized to a 256-pixel short side: 1,024,000x256
    assert len(thin) < 200
    with pytest.raises(PayloadTooLarge, match="resized"):
        decode_image(thin, resize_size=PRE.resize_size)
    with pytest.raises(PayloadTooLarge, match="resized"):
        PRE.crop(decode_image(thin))  # and crop itself refuses, whoever calls it
    decode_image(png_bytes_of_size(400, 300), resize_size=PRE.resize_size)  # an ordinary aspect is fine


def test_3_a_batch_is_refused_from_its_headers_before_any_image_is_decoded() -> None:
    from shared.preprocessing import decode_images

    blobs = [png_bytes_of_size(2000, 2000)] * 4  # 4 Mpixel each, 16 Mpixel together
    limits = ImageLimits(max_pixels=5_000_000, max_batch_pixels=10_000_000)
    with pytest.raises(PayloadTooLarge, match="16000000 pixels together"):
        decode_images(blobs, limits)
    assert len(decode_images(blobs[:2], limits)) == 2


def test_8_a_png_icc_chunk_bomb_is_an_invalid_image() -> None:
    with pytest.raises(InvalidImage, match="MAX_TEXT_CHUNK"):
        decode_image(icc_chunk_bomb())


def test_8_a_png_text_chunk_bomb_is_never_inflated() -> None:
    """Text chunks are dropped before Pillow reads the image (shared.images): the image decodes, its text never
    inflated (it was a 422 when Pillow refused the chunk past its MAX_TEXT_CHUNK)."""
    assert decode_image(text_chunk_bomb()).size == (8, 8)


def test_13_photos_decode_upright_in_8_bit_rgb_with_alpha_composited() -> None:
    images = {name: np.asarray(decode_image(data)) for name, data in photo_variants().items()}
    assert all(image.dtype == np.uint8 and image.shape == (200, 300, 3) for image in images.values())
    assert np.array_equal(images["upright"], images["exif-rotated"])
    assert np.array_equal(images["grey8"], images["grey16"])
    assert np.array_equal(images["on-white"], images["transparent"])


def test_15_image_sizes_that_wrap_around_int64_are_refused_before_summing() -> None:
    blob = png_bytes_of_size(8, 8)
    # NOTE: 4 * 2**62 + len(blob) wraps to len(blob) in int64.
    sizes = torch.tensor([2**62, 2**62, 2**62, 2**62, len(blob)], dtype=torch.int64)
    assert int(sizes.sum()) == len(blob)
    payload = Payload(
        kind="image",
        model="m",
        weights="w",
        cut="input",
        codec="image",
        tensors=(sizes, torch.frombuffer(bytearray(blob), dtype=torch.uint8)),
        names=("image_sizes", "image_bytes"),
    )
    with pytest.raises(InvalidTensor, match="do not add up"):
        images_from_payload(payload, PRE, ImageLimits(), WireLimits())


def test_a_crop_of_the_wrong_size_at_the_input_cut_is_refused_before_it_is_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Codec png at cut input carries the 224 crop itself: a 36-megapixel PNG (35 KB on the wire) is refused
    from its header, not decoded first (121 MiB) and refused after."""
    import shared.images

    def payload_of(blob: bytes) -> Payload:
        return Payload(
            kind="image",
            model="m",
            weights="w",
            cut="input",
            codec="png",
            tensors=(torch.tensor([len(blob)]), torch.frombuffer(bytearray(blob), dtype=torch.uint8)),
            names=("image_sizes", "image_bytes"),
        )

    crop = images_from_payload(payload_of(png_bytes_of_size(224, 224)), PRE, ImageLimits(), WireLimits())
    assert tuple(crop.shape) == (1, 3, 224, 224)
    decoded: list[object] = []
    monkeypatch.setattr(shared.images, "_load", lambda *args: decoded.append(args))
    with pytest.raises(InvalidImage, match=r"png image of the input cut: .*224x224 pixels; it is 7200x5000"):
        images_from_payload(payload_of(png_bytes_of_size(7200, 5000)), PRE, ImageLimits(), WireLimits())
    assert decoded == []


def test_an_image_that_fails_partway_counts_the_pixels_it_allocated_and_frees_them() -> None:
    """Pillow allocates an image's buffer before reading its data: a truncated image raises
    UndecodableImage (422) carrying the pixels its request had allocated, with every buffer freed by then
    (no traceback keeps the decoder alive), so the heap trim that follows finds them free."""
    from PIL import Image

    from shared.images import UndecodableImage
    from shared.preprocessing import decode_images

    whole = png_bytes_of_size(1200, 1000)
    cut = png_bytes_of_size(2500, 2000)
    cut = cut[: len(cut) * 6 // 10]
    before = Image.core.get_stats()
    with pytest.raises(UndecodableImage, match=r"image 1 \(0-based\) of 2: .*truncated") as raised:
        decode_images([whole, cut], resize_size=PRE.resize_size)
    after = Image.core.get_stats()
    assert raised.value.status == 422 and isinstance(raised.value, InvalidImage)
    assert raised.value.decoded_pixels == 1200 * 1000 + 2500 * 2000
    allocated = after["allocated_blocks"] - before["allocated_blocks"]
    assert allocated > 0 and after["freed_blocks"] - before["freed_blocks"] == allocated


def test_a_truncated_large_jpeg_counts_the_pixels_of_its_reduced_decode() -> None:
    """A large JPEG is decoded at a reduced scale (its draft): what it allocated is that size."""
    import io

    from PIL import Image

    from shared.images import UndecodableImage
    from shared.preprocessing import decode_images

    y, x = np.mgrid[0:4096, 0:4096]
    picture = np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG", quality=80)
    blob = buffer.getvalue()
    with pytest.raises(UndecodableImage, match="truncated") as raised:
        decode_images([blob[: len(blob) * 6 // 10]], resize_size=PRE.resize_size)
    assert raised.value.decoded_pixels == 1024 * 1024  # a quarter of each side: 4 x 256 on its short side
    with pytest.raises(UndecodableImage, match="truncated") as raised:
        decode_images([blob[: len(blob) * 6 // 10]])  # no resize size: decoded whole
    assert raised.value.decoded_pixels == 4096 * 4096
