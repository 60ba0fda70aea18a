"""Tracing what users bring: optional forward arguments, tracer options, shape integers across cuts,
unique cut names, and the real pretrained EfficientNet-Lite0."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
import torch
from torch import nn

from shared.errors import InvalidTensor, MalformedPayload
from shared.models import LITE0, load_model
from shared.protocol import encode_activations, expected_for_cut
from shared.splitting import ModelGraph
from shared.tracing import TraceOptions
from shared.wire import MAX_VALUES, decode_payload, encode_payload

COMMON = {"model": "m", "weights": "sha256:0"}


class WithOptionalArgs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, scale: float = 1.0) -> torch.Tensor:
        x = self.conv(x) * scale
        if mask is not None:
            x = x * mask
        return self.fc(x.mean((2, 3)))


class Untraceable(nn.Module):
    """Data-dependent control flow: only traceable as a leaf."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if bool(x.sum() > 0) else x


def clamp_positive(x: torch.Tensor) -> torch.Tensor:
    return x if bool(x.min() >= 0) else x.clamp_min(0)


class NeedsOptions(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate = Untraceable()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return clamp_positive(self.conv(self.gate(x))).flatten(1)


class WindowModel(nn.Module):
    """Swin-like: ``B, H, W, C = x.shape`` before a block, used after it; windows of 4 rows per item."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        windows = x.reshape(b, c, 2, h // 2, 2, w // 2).permute(0, 2, 4, 3, 5, 1).reshape(-1, h // 2, w // 2, c)
        windows = self.act(self.proj(windows))
        x = windows.reshape(b, 2, 2, h // 2, w // 2, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)
        return self.act(x).mean((2, 3))


class SizeKeeper(nn.Module):
    """``x.size()`` taken before a convolution, used after it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.size()
        return self.conv(x).flatten(1).reshape(shape)


def _exact_everywhere(model: nn.Module, graph: ModelGraph, batch: int = 2) -> None:
    x = torch.randn(batch, *graph.input_shape[1:], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = model(x)
        for cut in graph.cuts:
            head, tail = graph.split(cut)
            assert torch.equal(tail(*head(x)), reference), cut.name


def test_optional_arguments_are_bound_to_their_defaults() -> None:
    model = WithOptionalArgs().eval()
    graph = ModelGraph(model, (1, 3, 8, 8))
    _exact_everywhere(model, graph)
    bound = ModelGraph(model, (1, 3, 8, 8), TraceOptions(concrete_args={"scale": 2.0}))
    head, tail = bound.split("conv")
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(tail(*head(x)), model(x, scale=2.0))


def test_a_second_required_input_is_refused() -> None:
    class TwoInputs(nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return x + y

    with pytest.raises(ValueError, match="more than one input"):
        ModelGraph(TwoInputs(), (1, 3, 8, 8))


def test_leaf_modules_and_autowrap_functions_are_passed_to_the_tracer() -> None:
    model = NeedsOptions().eval()
    with pytest.raises(ValueError, match="tracing failed"):
        ModelGraph(model, (1, 3, 8, 8))
    options = TraceOptions(leaf_modules=(Untraceable,), autowrap_functions=(clamp_positive,))
    graph = ModelGraph(model, (1, 3, 8, 8), options)
    assert "gate" in {c.name for c in graph.cuts}
    _exact_everywhere(model, graph)
    assert options.to_json()["leaf_modules"][0].endswith("Untraceable")


def test_shape_integers_and_window_rows_cross_cuts_at_any_batch() -> None:
    model = WindowModel().eval()
    graph = ModelGraph(model, (1, 4, 8, 8))
    inside = graph.cut("proj")
    assert [v.kind for v in inside.values] and inside.tensors[0].per_item == 4  # 4 windows per image
    for batch in (1, 2, 5):
        _exact_everywhere(model, graph, batch)
    # A torch.Size alive across a module (not only across the shape bookkeeping that unpacks it).
    keeper = ModelGraph(SizeKeeper().eval(), (1, 4, 8, 8))
    shape = next(v for v in keeper.cut("conv").values if v.kind == "size")
    assert shape.at(3) == torch.Size([3, 4, 8, 8])
    _exact_everywhere(keeper.model, keeper, 3)


def test_values_travel_in_the_payload_and_are_checked() -> None:
    model = WindowModel().eval()
    graph = ModelGraph(model, (1, 4, 8, 8))
    cut = graph.cut("proj")
    head, _ = graph.split(cut)
    with torch.no_grad():
        outputs = head(torch.randn(3, 4, 8, 8))
    data = encode_activations(outputs, cut, codec="fp32", **COMMON)
    payload = decode_payload(data, kind="activations", expected=expected_for_cut(cut), **COMMON)
    assert payload.batch_size == 3 and list(payload.values) == [v.at(3) for v in cut.values]
    # A value that does not fit the batch the tensors carry is refused, whatever the tensors say.
    tensors = {t.name: o for t, o in zip(cut.tensors, outputs, strict=False)}
    lying = {v.name: v.at(7) for v in cut.values}
    forged = encode_payload(tensors, kind="activations", cut=cut.name, codec="fp32", values=lying, **COMMON)
    with pytest.raises(InvalidTensor, match="at batch 3 this cut expects"):
        decode_payload(forged, kind="activations", expected=expected_for_cut(cut), **COMMON)
    missing = encode_payload(tensors, kind="activations", cut=cut.name, codec="fp32", **COMMON)
    with pytest.raises(InvalidTensor, match="carries values"):
        decode_payload(missing, kind="activations", expected=expected_for_cut(cut), **COMMON)
    many = {f"v{i}": i for i in range(MAX_VALUES + 1)}
    flood = encode_payload(tensors, kind="activations", cut=cut.name, codec="fp32", values=many, **COMMON)
    with pytest.raises(MalformedPayload, match="at most"):
        decode_payload(flood, kind="activations", expected=expected_for_cut(cut), **COMMON)


@pytest.mark.parametrize("value", [1.5, True, "3", [1, [2]], None])
def test_only_integer_values_can_be_sent(value: Any) -> None:
    from shared.errors import UnsupportedMediaType

    with pytest.raises(UnsupportedMediaType):
        encode_payload({"x": torch.zeros(1)}, kind="activations", cut="c", codec="fp32", values={"v": value}, **COMMON)


def test_cut_names_are_unique_and_resolve_to_their_own_cut() -> None:
    model = WindowModel().eval()
    graph = ModelGraph(model, (1, 4, 8, 8))
    names = [c.name for c in graph.cuts]
    assert len(names) == len(set(names)) and "act#2" in names
    for cut in graph.cuts:
        assert graph.cut(cut.name) == cut == graph.cut(cut.index)
    assert ModelGraph(model, (1, 4, 8, 8)).cuts_digest() == graph.cuts_digest()


def test_default_cut_is_single_tensor_near_half_the_flops() -> None:
    model = WindowModel().eval()
    graph = ModelGraph(model, (1, 4, 8, 8))
    default = graph.cut("default")
    assert default.single_tensor and default == graph.default_cut()
    assert all(
        abs(default.head_flops_share - 0.5) <= abs(c.head_flops_share - 0.5) + 1e-12
        for c in graph.single_tensor_cuts()
        if c.name not in ("input", "output")
    )


def test_swin_has_cuts_inside_its_blocks() -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()
    graph = ModelGraph(model, (1, 3, 224, 224))
    inside = [c for c in graph.cuts if "_blocks_" in c.node and not re.fullmatch(r"layers\.\d+\.blocks\.\d+", c.name)]
    assert len(graph.cuts) >= 300 and len(inside) >= 100, (len(graph.cuts), len(inside))
    windows = [c for c in graph.cuts if any(t.per_item > 1 for t in c.tensors)]
    assert windows  # tensors of 64 windows per image cross cuts inside attention
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(x)
        for cut in [windows[0], windows[len(windows) // 2], inside[len(inside) // 3]]:
            head, tail = graph.split(cut)
            assert float((tail(*head(x)) - reference).abs().max()) <= 1e-5, cut.name


def test_lite0_package_model_as_is_has_80_exact_cuts_at_batch_2() -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    loaded = load_model(LITE0, "DEFAULT")
    assert loaded.weights_kind == "pretrained" and loaded.labels[281] == "tabby"
    graph = loaded.graph()
    assert len(graph.cuts) >= 80
    _exact_everywhere(loaded.module, graph, batch=2)


def test_global_rng_is_not_reseeded() -> None:
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    load_model("tests.fixture_models:tiny_cnn", "none")
    assert torch.equal(torch.rand(3), expected)
    assert math.isfinite(float(expected.sum()))


def test_cli_takes_model_options_and_notes_random_weights(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from splitinfer.cli import main

    model = "tests.fixture_models:custom_256"
    assert main(["cuts", model, "--input-size", "256", "--mean", "0.5,0.5,0.5", "--json"]) == 0
    captured = capsys.readouterr()
    listed = json.loads(captured.out)
    assert listed["input_size"] == 256 and "act#2" in [c["name"] for c in listed["cuts"]]
    # 224 does not fit this model's head: the option is what makes it traceable at all.
    assert main(["cuts", model, "--input-size", "224", "--json"]) == 2
    assert main(["cuts", model, "--concrete-args", "[1]"]) == 2


class GroupMajor(nn.Module):
    """Two groups per item stacked group-major (``2 * B`` rows, but not item by item)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        groups = x.reshape(b, 2, 2, 4, 4).transpose(0, 1).reshape(2 * b, 2, 4, 4)
        groups = self.conv(groups)
        return groups.reshape(2, b, 2, 4, 4).transpose(0, 1).reshape(b, -1)


def test_rows_that_are_not_item_major_do_not_cross_a_cut() -> None:
    """The cloud concatenates requests along the first dimension: only item-major rows survive that."""
    model = GroupMajor().eval()
    graph = ModelGraph(model, (1, 4, 4, 4))
    with pytest.raises(ValueError, match="cannot be split"):
        graph.cut("conv")
    _exact_everywhere(model, graph, batch=3)
