"""The cloud's hot-path shortcuts: cheap tails and small payloads stay on the event loop, the rest do not."""

from __future__ import annotations

import threading

import pytest
import torch

from cloud_service.runtime import INLINE_DECODE_BYTES, CloudModel, InlineWhenCheap
from shared.models import load_model
from shared.protocol import encode_activations


def test_cheap_work_runs_in_the_caller_and_the_rest_on_the_tail_thread() -> None:
    with InlineWhenCheap(lambda cheap: cheap) as executor:
        here = threading.get_ident()
        assert executor.submit(lambda cheap: threading.get_ident(), True).result() == here
        assert executor.submit(lambda cheap: threading.get_ident(), False).result() != here

        def fail(cheap: bool) -> None:
            raise ValueError("bad input")

        with pytest.raises(ValueError, match="bad input"):
            executor.submit(fail, True).result()  # NOTE: delivered through the future, as the pool does


def test_only_a_built_classifier_sized_cpu_tail_counts_as_cheap() -> None:
    model = CloudModel(load_model("resnet18", "none"))
    one = [(torch.zeros(1, 512),)]
    assert not model.cheap_tail("flatten", one)  # not built yet: its first run builds it, on the thread
    model.tail("flatten")
    model.tail("layer3")
    assert model.cheap_tail("flatten", one)  # resnet18's fc: 1 MFLOP per image
    assert not model.cheap_tail("flatten", one * 64)  # 64 images: over the limit
    assert not model.cheap_tail("layer3", [(torch.zeros(1, 256, 14, 14),)])


def test_small_fixed_size_activations_decode_on_the_loop_and_compressed_ones_do_not() -> None:
    loaded = load_model("resnet18", "none")
    model = CloudModel(loaded)
    cut = model.graph.cut("flatten")
    common = {"model": loaded.name, "weights": loaded.digest}
    small = encode_activations((torch.rand(1, 512),), cut, codec="fp32", **common)
    assert len(small) <= INLINE_DECODE_BYTES and model.cheap_to_decode(small, model.read_header(small))
    zstd = encode_activations((torch.rand(1, 512),), cut, codec="int8+zstd", **common)
    assert not model.cheap_to_decode(zstd, model.read_header(zstd))
    big = encode_activations((torch.rand(600, 512),), cut, codec="fp32", **common)
    assert len(big) > INLINE_DECODE_BYTES and not model.cheap_to_decode(big, model.read_header(big))


def test_only_images_at_the_input_cut_report_decoded_pixels() -> None:
    """What the cloud's heap trim keys on: the decoded pictures' pixels; activations report none (their
    path pays one comparison for it)."""
    from PIL import Image

    from shared.protocol import encode_images
    from splitinfer.samples import encode_image

    loaded = load_model("resnet18", "none")
    model = CloudModel(loaded)
    common = {"model": loaded.name, "weights": loaded.digest}
    activations = encode_activations((torch.rand(1, 512),), model.graph.cut("flatten"), codec="fp32", **common)
    assert model.decode(activations).decoded_pixels == 0
    pictures = [Image.new("RGB", (640, 480)), Image.new("RGB", (300, 200))]
    raw = [encode_image(picture) for picture in pictures]
    for codec, pixels in (("image", 640 * 480 + 300 * 200), ("png", 2 * 224 * 224), ("uint8", 2 * 224 * 224)):
        payload = encode_images(raw, pictures, loaded.preprocessor, codec=codec, **common)
        assert model.decode(payload).decoded_pixels == pixels, codec
