"""BatchNorm folded into the convolutions of the torch halves (FOLD_BN): logits within 1e-4 of the unsplit model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cloud_service.runtime import CloudModel
from edge_service.runtime import EdgeModel
from shared.folding import count_batchnorms, fold_batchnorm
from shared.models import LoadedModel, load_model
from shared.preprocessing import ImageLimits, decode_images
from splitinfer.samples import encode_image, synthetic_image


def _resnet18_with_real_looking_batchnorms() -> LoadedModel:
    """resnet18 whose BatchNorms are not the identity (fresh ones are), so that folding changes the arithmetic."""
    loaded = load_model("resnet18", "none")
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for module in loaded.module.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
    return loaded


def test_folded_halves_on_edge_and_cloud_are_within_1e4_of_the_unsplit_model() -> None:
    jpegs = [encode_image(synthetic_image(seed=s)) for s in range(2)]
    edge_model = _resnet18_with_real_looking_batchnorms()
    edge = EdgeModel(edge_model, ImageLimits(), fold_bn=True)
    cloud = CloudModel(_resnet18_with_real_looking_batchnorms(), fold_bn=True)
    route = edge.route_for("layer3", "fp32")
    prepared = edge.prepare(jpegs, route)
    (logits,) = cloud.run("layer3", [cloud.decode(prepared.payload).tensors])
    with torch.inference_mode():
        images = decode_images(jpegs, resize_size=edge_model.preprocessor.resize_size)  # NOTE: prepare frees its own
        want = edge_model.module(edge_model.preprocessor.batch(images))
    assert 0 < (logits - want).abs().max() <= 1e-4  # not bit-exact, within the tolerance
    head, tail = edge._split(route.cut)
    assert count_batchnorms(head) == 0 and count_batchnorms(cloud.tail("layer3")) == 0
    assert count_batchnorms(tail) == 0
    assert count_batchnorms(edge_model.module) == 20  # the model keeps its own layers: folding copies


def test_a_half_in_training_mode_is_refused() -> None:
    loaded = load_model("tests.fixture_models:tiny_cnn", "none")
    head, _ = loaded.graph().split("stem")
    head.train()
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(head)
