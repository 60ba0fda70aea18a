from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from shared.models import RANDOM_SEED, load_model
from shared.splitting import INPUT_CUT, OUTPUT_CUT, ModelGraph, list_cuts, split_model
from tests.conftest import FIXED_SIZE_MODELS, SMALL_VIT_SIZES, default_input_size, sweep_input_size

TOLERANCE = 1e-5
NAMED_MODELS = [
    "resnet18",
    "resnet50",
    "mobilenet_v3_large",
    "vit_b_16",
    "efficientnet_b0",
    "googlenet",
    "swin_t",
    "convnext_tiny",
]
ALL_MODELS = torchvision.models.list_models(module=torchvision.models)
# NOTE: the two largest models take 15-20 s each to build; the slow sweep splits them at every cut, and their
# families are checked here through their smaller members.
SWEEP_ONLY_MODELS = {"regnet_y_128gf", "vit_h_14"}


def _small_vit(name: str) -> nn.Module:
    """torchvision's ViT ``name`` built for a SMALL_VIT_SIZES input: the same layers and parameters but a
    shorter position embedding (random weights, seeded as load_model seeds them)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        model = torchvision.models.get_model(name, weights=None, image_size=SMALL_VIT_SIZES[name])
    return model.eval()


def _graph(name: str, *, full_size: bool = False) -> tuple[nn.Module, ModelGraph, torch.Tensor]:
    """``name``'s model, graph and a fixed input: the default suite's (``default_input_size``) or, with
    ``full_size``, the slow sweep's (``sweep_input_size``: the ViTs, MaxViT and inception_v3 at their own)."""
    if full_size:
        model = load_model(name, "none").module
        size = sweep_input_size(name)
        batch = 1 if name in FIXED_SIZE_MODELS else 2  # NOTE: keeps the large-input sweeps inside their budget
    else:
        model = _small_vit(name) if name in SMALL_VIT_SIZES else load_model(name, "none").module
        size = default_input_size(name)
        batch = 1 if size >= 224 else 2
    graph = ModelGraph(model, (1, 3, size, size))
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    return model, graph, x


def _max_error(graph: ModelGraph, cut: object, x: torch.Tensor, reference: torch.Tensor) -> float:
    head, tail = graph.split(cut)  # type: ignore[arg-type]
    with torch.no_grad():
        return float((tail(*head(x)) - reference).abs().max())


@pytest.fixture(scope="module")
def resnet18() -> tuple[nn.Module, ModelGraph, torch.Tensor]:
    return _graph("resnet18")


@pytest.fixture(scope="module")
def vit_b_16() -> tuple[nn.Module, ModelGraph, torch.Tensor]:
    """vit_b_16 at 224x224, batch 1 (the shapes below are its own)."""
    return _graph("vit_b_16", full_size=True)


def test_the_naive_children_recipe_is_broken(resnet18: tuple[nn.Module, ModelGraph, torch.Tensor]) -> None:
    """Why this library exists: nn.Sequential(*children) drops forward()'s flatten."""
    model, _, x = resnet18
    naive = nn.Sequential(*list(model.children()))
    with torch.no_grad(), pytest.raises(RuntimeError, match="mat1 and mat2"):
        naive(x)


def test_special_cuts_come_first_and_last(resnet18: tuple[nn.Module, ModelGraph, torch.Tensor]) -> None:
    _, graph, _ = resnet18
    assert graph.cuts[0].name == INPUT_CUT and graph.cuts[0].head_flops_share == 0.0
    assert graph.cuts[-1].name == OUTPUT_CUT and graph.cuts[-1].head_flops_share == pytest.approx(1.0)
    assert [c.index for c in graph.cuts] == list(range(len(graph.cuts)))
    shares = [c.head_flops_share for c in graph.cuts]
    assert shares == sorted(shares)


def test_cuts_resolve_by_module_node_and_position(resnet18: tuple[nn.Module, ModelGraph, torch.Tensor]) -> None:
    _, graph, _ = resnet18
    layer3 = graph.cut("layer3")
    assert layer3.name == "layer3"
    assert graph.cut(layer3.node) == layer3  # FX node name of the last head node
    assert graph.cut(layer3.index) == layer3
    assert graph.cut(str(layer3.index)) == layer3
    assert graph.cut(-1).name == OUTPUT_CUT
    assert graph.cut("layer3.1") == layer3  # the last block ends where the layer ends
    assert [t.shape for t in layer3.tensors] == [(1, 256, 4, 4)]  # 64x64 input


def test_unknown_cut_names_nearby_valid_ones(resnet18: tuple[nn.Module, ModelGraph, torch.Tensor]) -> None:
    _, graph, _ = resnet18
    with pytest.raises(ValueError, match=r"unknown cut 'layer33'.*Did you mean 'layer3'"):
        graph.cut("layer33")
    with pytest.raises(ValueError, match="out of range"):
        graph.cut(10_000)


def test_only_ascii_digits_name_a_cut_by_index(resnet18: tuple[nn.Module, ModelGraph, torch.Tensor]) -> None:
    """A query parameter ``cut=\u0663`` (ARABIC-INDIC DIGIT THREE) is an unknown cut, not cut 3."""
    _, graph, _ = resnet18
    for name in ("\u0663", "-\u0663", "\uff13", "--3"):
        with pytest.raises(ValueError, match="unknown cut"):
            graph.cut(name)


def test_multi_tensor_cut_inside_a_residual_block(resnet18: tuple[nn.Module, ModelGraph, torch.Tensor]) -> None:
    model, graph, x = resnet18
    cut = graph.cut("layer1.0.bn2")
    assert not cut.single_tensor
    assert [t.name for t in cut.tensors] == ["maxpool", "layer1_0_bn2"]  # the skip and the branch
    head, tail = graph.split(cut)
    with torch.no_grad():
        shipped = head(x)
        assert len(shipped) == 2
        assert torch.equal(tail(*shipped), model(x))


def test_parameters_never_cross_a_cut(vit_b_16: tuple[nn.Module, ModelGraph, torch.Tensor]) -> None:
    model, graph, x = vit_b_16
    parameters = {id(p) for p in model.parameters()} | {id(b) for b in model.buffers()}
    # right after the patch projection, before class token and position embedding
    cut = next(c for c in graph.cuts if [t.shape for t in c.tensors] == [(1, 768, 196)])
    head, tail = graph.split(cut)
    with torch.no_grad():
        shipped = head(x)[: len(cut.tensors)]
    assert [t.shape for t in shipped] == [torch.Size([x.shape[0], 768, 196])]
    assert not any(id(t) in parameters for t in shipped)
    tail_attrs = {n.target for n in tail.graph.nodes if n.op == "get_attr"}
    assert {"class_token", "encoder.pos_embedding"} <= tail_attrs
    for cut in graph.cuts:
        assert not {t.name for t in cut.tensors} & {"class_token", "encoder_pos_embedding"}


def test_shape_integers_travel_across_a_cut(vit_b_16: tuple[nn.Module, ModelGraph, torch.Tensor]) -> None:
    model, graph, x = vit_b_16
    # The patch grid size (h // patch) is a Python int computed before conv_proj and used after it:
    # it crosses the cut as a value, predicted for any batch size and reported by the cut.
    cut = graph.cut("conv_proj")
    assert [v.name for v in cut.values] and all(v.kind == "int" for v in cut.values)
    assert cut.to_json()["values"][0]["per_item"] in (0, 1)
    head, tail = graph.split(cut)
    with torch.no_grad():
        shipped = head(x)
        assert list(shipped[len(cut.tensors) :]) == [v.at(x.shape[0]) for v in cut.values]
        assert torch.equal(tail(*shipped), model(x))
    # nn.MultiheadAttention returns a tuple of tensors: right after it only the tuple is alive.
    with pytest.raises(ValueError, match="neither batch-first tensors nor shape-derived integers"):
        graph.cut("encoder_layers_encoder_layer_0_self_attention")
    assert graph.cut("encoder.layers.encoder_layer_5").single_tensor


def test_bookkeeping_nodes_never_name_a_cut(vit_b_16: tuple[nn.Module, ModelGraph, torch.Tensor]) -> None:
    """torch._assert, x.shape, x.dim() and integer arithmetic are no place to name (or offer) a cut."""
    model, graph, x = vit_b_16
    names = [c.name for c in graph.cuts]
    assert not [n for n in names if any(word in n for word in ("_assert", "getattr", "getitem", "floordiv", "dim_"))]
    assert len(names) == len(set(names)) and not [n for n in names if "#" in n]
    # A bookkeeping node's cut carried the same tensors as its neighbour: its FX name resolves to that neighbour.
    layer5 = graph.cut("encoder.layers.encoder_layer_5")
    assert graph.cut("_assert_9") == graph.cut("dim_7") == layer5 == graph.default_cut()
    assert graph.cut("_assert") == graph.cut("getattr_1") == graph.cut("input")
    # The attention's tuple unpacked: the cut is named after the module that produced its tensors.
    attention = graph.cut("encoder.layers.encoder_layer_0.self_attention")
    assert attention.node == "getitem_6" and [t.shape for t in attention.tensors] == [(1, 197, 768)] * 2
    # The class token sliced out of the encoder's output.
    token = graph.cut("encoder[:,0]")
    assert [t.shape for t in token.tensors] == [(1, 768)] and token.index == len(graph.cuts) - 2
    with torch.no_grad():
        reference = model(x)
    for cut in (attention, token, layer5):
        assert _max_error(graph, cut, x, reference) == 0.0, cut.name


def test_split_model_and_list_cuts_functions() -> None:
    model = load_model("mobilenet_v3_large", "none").module
    cuts = list_cuts(model, (1, 3, 64, 64))
    assert any(c.name == "features.6" for c in cuts)
    head, tail = split_model(model, "features.6", (1, 3, 64, 64))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(tail(*head(x)), model(x))


def test_models_by_import_path_split_too() -> None:
    loaded = load_model("tests.fixture_models:tiny_cnn", "none")
    graph = ModelGraph(loaded.module, (1, 3, 32, 32))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        reference = loaded.module(x)
    for cut in graph.cuts:
        assert _max_error(graph, cut, x, reference) == 0.0
    assert "block" in {c.name for c in graph.cuts}


def test_training_mode_is_restored() -> None:
    model = load_model("resnet18", "none").module.train()
    ModelGraph(model, (1, 3, 32, 32))
    assert model.training


def _three_cuts(graph: ModelGraph) -> list[int]:
    inner = [c for c in graph.single_tensor_cuts() if c.name not in (INPUT_CUT, OUTPUT_CUT)]
    assert len(inner) >= 3, f"only {len(inner)} inner single-tensor cuts"
    return [inner[0].index, inner[len(inner) // 2].index, inner[-1].index]


@pytest.mark.parametrize("name", NAMED_MODELS)
def test_every_cut_equals_the_unsplit_model(name: str) -> None:
    """Also the three-cut test of these models (at the same input): its cuts are among these."""
    model, graph, x = _graph(name)
    with torch.no_grad():
        reference = model(x)
    errors = {cut.name: _max_error(graph, cut, x, reference) for cut in graph.cuts}
    worst = max(errors, key=lambda n: errors[n])
    assert errors[worst] <= TOLERANCE, f"{name} at {worst}: {errors[worst]}"
    assert len(errors) >= 10
    assert {graph.cuts[i].name for i in _three_cuts(graph)} <= errors.keys()


@pytest.mark.parametrize("name", [m for m in ALL_MODELS if m not in NAMED_MODELS and m not in SWEEP_ONLY_MODELS])
def test_every_torchvision_model_splits_at_three_cuts(name: str) -> None:
    """The first, middle and last inner single-tensor cut of every torchvision model; the NAMED_MODELS' are
    checked with all their cuts above, the SWEEP_ONLY_MODELS' by the slow sweep."""
    model, graph, x = _graph(name)
    with torch.no_grad():
        reference = model(x)
    for index in _three_cuts(graph):
        assert _max_error(graph, index, x, reference) <= TOLERANCE, graph.cuts[index].name


@pytest.mark.slow
@pytest.mark.timeout(3 * 3600)  # vit_h_14 alone has ~300 cuts of a 632M-parameter model
@pytest.mark.parametrize("name", ALL_MODELS)
def test_sweep_every_cut_of_every_model(name: str) -> None:
    model, graph, x = _graph(name, full_size=True)
    with torch.no_grad():
        reference = model(x)
    for cut in graph.cuts:
        assert _max_error(graph, cut, x, reference) <= TOLERANCE, cut.name
