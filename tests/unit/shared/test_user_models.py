"""Models written the way users write them, split at every cut and sent over the wire: what crosses a cut
must be everything the tail needs, as copies (the wire and the cloud's batching never share memory)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shared.protocol import encode_activations, expected_for_cut
from shared.splitting import ModelGraph
from shared.wire import decode_payload

COMMON = {"model": "m", "weights": "sha256:0"}


class ViewThenInplace(nn.Module):
    """``flat`` is a view of the stem's output taken before an in-place ReLU: the ReLU shows through it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4, 5)
        self.proj = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        flat = x.flatten(1)
        x = self.act(x)
        return self.fc(x.mean((2, 3))) + self.proj(flat)


class InplaceOnTheSameNode(nn.Module):
    """In-place methods whose results are not rebound (``x.relu_()``), and ``+=``/``mul_``."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(x)
        skip = x
        x.relu_()
        y = self.b(x)
        y += skip
        y.mul_(0.5)
        return self.fc(y.mean((2, 3)))


def _over_the_wire(graph: ModelGraph, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every cut's logits with the head's outputs encoded and decoded, as the cloud receives them."""
    results = {}
    with torch.no_grad():
        for cut in graph.cuts[1:]:
            head, tail = graph.split(cut)
            data = encode_activations(head(x), cut, codec="fp32", **COMMON)
            payload = decode_payload(data, kind="activations", expected=expected_for_cut(cut), **COMMON)
            results[cut.name] = tail(*payload.tensors, *payload.values)
    return results


@pytest.mark.parametrize("model_class", [ViewThenInplace, InplaceOnTheSameNode])
def test_every_cut_is_exact_over_the_wire(model_class: type[nn.Module]) -> None:
    model = model_class().eval()
    graph = ModelGraph(model, (1, 3, 16, 16))
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(x)
    wrong = [name for name, logits in _over_the_wire(graph, x).items() if not torch.equal(logits, reference)]
    assert not wrong


def test_a_view_written_through_after_the_cut_is_not_a_cut() -> None:
    """Found in session 14: cut ``flatten`` shipped ``stem`` and its view ``flatten`` as two copies; the tail's
    in-place ReLU changed one, and the logits were silently wrong (max error ~0.5 through real services)."""
    graph = ModelGraph(ViewThenInplace().eval(), (1, 3, 16, 16))
    assert "flatten" not in [c.name for c in graph.cuts]
    with pytest.raises(ValueError, match=r"'flatten' cannot be split: stem, flatten share memory and 'act'"):
        graph.cut("flatten")
    assert {"stem", "act"} <= {c.name for c in graph.cuts}  # before the view, and once the ReLU has run


class NormalizesInside(nn.Module):
    """Normalization inside the model, from registered buffers (a common way to ship a model)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1))
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv((x - self.mean) / self.std)
        return self.fc(x.mean((2, 3)))


def test_halves_read_the_buffers_of_the_model_moved_after_tracing() -> None:
    """Found in session 14: the halves held the buffers the model had when it was traced, and ``.to(device)``
    replaces buffers, so a cloud that moves its model after tracing (CloudModel, profile_model) ran tails with
    CPU buffers against GPU inputs: every request failed. The meta device stands in for a GPU here."""
    model = NormalizesInside().eval()
    graph = ModelGraph(model, (1, 3, 16, 16))
    model.to("meta")
    assert graph.split("input")[1].get_buffer("mean") is model.mean
    for cut in graph.cuts:
        head, tail = graph.split(cut)
        outputs = head(torch.zeros(2, 3, 16, 16, device="meta"))
        logits = tail(*outputs)
        assert logits.device.type == "meta" and logits.shape == (2, 5)


class Features(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, stride=4, padding=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(self.conv(x), 1)


class Pooled4d(Features):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class Squeezed(Features):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).squeeze()


class DropoutAlwaysOn(Features):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.dropout(self.features(x), 0.5, training=True).flatten(1)


class DictOutput(Features):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.features(x).flatten(1), "features": x.mean((2, 3))}


class Argmax(Features):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1).argmax(1, keepdim=True)


class CentredOnTheBatch(Features):
    """Each image's features less the batch's mean: an image's logits depend on the others batched with it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x).flatten(1)
        return features - features.mean(0, keepdim=True)


@pytest.mark.parametrize(
    ("model_class", "says"),
    [
        (CentredOnTheBatch, "of one image change when other images share its batch"),
        (Pooled4d, "returns a float32 tensor of shape 1x5x1x1 for one image; serving needs float logits of shape"),
        (Squeezed, r"do not have a batch dimension \(shape \[5\] for one image, \[2, 5\] for two: a squeeze\(\)\?\)"),
        (DropoutAlwaysOn, "are random: 'dropout' differs between two runs on the same input in eval mode"),
        (DictOutput, r"returns a dict of 2 values \(auxiliary outputs\?\).*\(out\['logits'\]\)"),
        (Argmax, "returns a int64 tensor of shape 1x1 for one image"),
    ],
)
def test_what_forward_returns_instead_of_logits_is_said(model_class: type[nn.Module], says: str) -> None:
    graph = ModelGraph(model_class().eval(), (1, 3, 16, 16))
    with pytest.raises(ValueError, match=says):
        graph.logits_classes()


def test_services_refuse_a_model_that_returns_aux_logits() -> None:
    """Found in session 14: both services started and became ready with a model returning ``(logits, aux)``;
    then every request through the cloud failed (502 at the edge), and ``profile``/``codecs`` printed a
    traceback. Now the services refuse to start and the commands fail in one line, saying what to change."""
    from cloud_service.runtime import CloudModel
    from edge_service.runtime import EdgeModel
    from shared.models import load_model
    from shared.preprocessing import ImageLimits
    from splitinfer.cli import main

    loaded = load_model("tests.fixture_models:with_aux_logits", "none")
    with pytest.raises(ValueError, match="returns a tuple of 2 values"):
        EdgeModel(loaded, ImageLimits())
    with pytest.raises(ValueError, match="returns a tuple of 2 values"):
        CloudModel(loaded)
    args = ["tests.fixture_models:with_aux_logits", "--weights", "none", "--input-size", "32", "--count", "1"]
    assert main(["codecs", *args]) == 2


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize(
    ("factory", "says"),
    [
        ("needs_arguments", "'tests.fixture_models:needs_arguments' requires argument.s. num_classes; it is called"),
        ("broken", "'tests.fixture_models:broken' failed: RuntimeError: checkpoint directory missing"),
        ("scripted_tiny_cnn", "returned a TorchScript module, which torch.fx cannot split"),
    ],
)
def test_a_factory_that_cannot_give_a_module_is_one_line(
    factory: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found in session 14: a factory that raised (or needed arguments) escaped as a traceback from the CLI
    and the services; a TorchScript module failed with torch.fx's internal message."""
    from shared.models import load_model
    from splitinfer.cli import main

    with pytest.raises(ValueError, match=says):
        load_model(f"tests.fixture_models:{factory}", "none")
    assert main(["cuts", f"tests.fixture_models:{factory}", "--input-size", "32"]) == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.slow  # NOTE: importing torch._dynamo alone takes about 15 s here
def test_a_compiled_module_is_split_as_the_module_it_wraps() -> None:
    from shared.models import load_model
    from tests.fixture_models import TinyCNN

    loaded = load_model("tests.fixture_models:compiled_tiny_cnn", "none")
    assert type(loaded.module) is TinyCNN
    graph = ModelGraph(loaded.module, (1, 3, 16, 16))
    assert graph.logits_classes() == 10
    with pytest.raises(ValueError, match=r"pass the module it wraps \(model._orig_mod\)"):
        ModelGraph(torch.compile(loaded.module), (1, 3, 16, 16))


@pytest.mark.parametrize(
    ("convert", "says"),
    [
        (lambda m: m.half(), "float32 input .* should be the same .the services feed float32 images: serve a float32"),
        (lambda m: m.to(torch.bfloat16), "serve a float32 model"),
        (lambda m: nn.Sequential(nn.Conv2d(1, 3, 1), m), "to have 1 channels, .* feed 3-channel RGB images"),
    ],
)
def test_a_model_for_other_inputs_is_told_what_the_services_feed(convert: object, says: str) -> None:
    model = convert(NormalizesInside()).eval()  # type: ignore[operator]
    with pytest.raises(ValueError, match=says) as raised:
        ModelGraph(model, (1, 3, 16, 16))
    assert "While executing" not in str(raised.value)  # torch.fx's own trailer, which points at its logs


class AutocastBlock(nn.Module):
    """A block run under ``torch.autocast`` inside forward: torch.fx records the block, not the context."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.block = nn.Sequential(nn.Linear(8, 64), nn.GELU(), nn.Linear(64, 8))
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x).mean((2, 3))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            x = self.block(x)
        return self.fc(x.float())


class AutocastLeaf(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(8, 64), nn.GELU(), nn.Linear(64, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.block(x).float()


class AutocastInLeaf(AutocastBlock):
    def __init__(self) -> None:
        super().__init__()
        self.block = AutocastLeaf()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(self.conv(x).mean((2, 3))))


def test_a_forward_that_tracing_cannot_record_is_refused() -> None:
    """Found in session 14: with a torch.autocast block inside forward, every cut (input and output too)
    computed the block in float32, silently unlike the model. The graph is now checked against the model."""
    model = AutocastBlock().eval()
    with pytest.raises(ValueError, match=r"its torch\.fx graph does not compute what its forward does"):
        ModelGraph(model, (1, 3, 16, 16))
    # As a leaf module the block runs as itself, context included.
    from shared.tracing import TraceOptions

    leafy = AutocastInLeaf().eval()
    graph = ModelGraph(leafy, (1, 3, 16, 16), TraceOptions(leaf_modules=(AutocastLeaf,)))
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = leafy(x)
        for cut in graph.cuts:
            head, tail = graph.split(cut)
            assert torch.equal(tail(*head(x)), reference), cut.name
