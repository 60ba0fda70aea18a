from __future__ import annotations

import pytest

from shared.models import load_model
from shared.splitting import ModelGraph
from splitinfer.fidelity import codec_report, default_codecs
from splitinfer.samples import encode_image, synthetic_image


@pytest.fixture(scope="module")
def resnet18() -> tuple[object, ModelGraph]:
    loaded = load_model("resnet18", "none")
    return loaded, ModelGraph(loaded.module, loaded.input_shape)


@pytest.mark.parametrize("cut", ["input", "layer4"])
def test_codec_report_at_resnet18(cut: str, resnet18: tuple[object, ModelGraph]) -> None:
    loaded, graph = resnet18
    jpegs = [encode_image(synthetic_image(seed=s)) for s in range(2)]
    rows = {r.codec: r for r in codec_report(loaded, graph, cut, jpegs, repeats=1)}  # type: ignore[arg-type]
    assert list(rows) == default_codecs(cut)
    lossless = ["image", "png", "uint8", "uint8+zstd"] if cut == "input" else ["fp32", "fp32+zstd"]
    for codec in lossless:
        assert rows[codec].max_abs_error == 0.0 and rows[codec].top1_agreement == 1.0
    if cut == "layer4":
        assert rows["int8+zstd"].bytes_per_image < 0.3 * rows["fp32"].bytes_per_image
        assert rows["fp16"].relative_l2_error < 1e-3
    else:
        # the reference is the JPEG of the model's own crop, what the `jpeg` codec sends (plus its header),
        # not the uploaded file, which the `image` codec forwards as it is
        crop_jpeg = rows["jpeg"].bytes_per_image / rows["jpeg"].ratio_to_jpeg
        assert rows["jpeg"].ratio_to_jpeg == pytest.approx(1.0, abs=0.1)
        assert crop_jpeg < rows["jpeg"].bytes_per_image < crop_jpeg + 1024
        uploaded = sum(map(len, jpegs)) / len(jpegs)
        assert uploaded < rows["image"].bytes_per_image < uploaded + 1024


def test_autocast_fidelity_is_reported(resnet18: tuple[object, ModelGraph]) -> None:
    loaded, graph = resnet18
    jpegs = [encode_image(synthetic_image(seed=s)) for s in range(2)]
    (plain,) = codec_report(loaded, graph, "layer3", jpegs, codecs=["fp32"], repeats=1)  # type: ignore[arg-type]
    (bf16,) = codec_report(loaded, graph, "layer3", jpegs, codecs=["fp32"], repeats=1, autocast="bf16")  # type: ignore[arg-type]
    assert plain.max_abs_error == 0.0
    assert 0.0 < bf16.relative_l2_error < 0.05
