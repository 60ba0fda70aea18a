"""The engine setting: edge heads and cloud tails on ONNX Runtime agree with torch within 1e-4."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cloud_service.runtime import CloudModel
from edge_service.runtime import EdgeModel
from shared.errors import ModelMismatch
from shared.models import load_model
from shared.ort_torch import OrtTorchHalf
from shared.preprocessing import ImageLimits
from splitinfer.samples import encode_image, synthetic_image


def test_edge_and_cloud_on_onnxruntime_match_torch(export_dir: Path) -> None:
    jpegs = [encode_image(synthetic_image(seed=s)) for s in range(2)]
    torch_edge = EdgeModel(load_model("resnet18", "none"), ImageLimits())
    ort_edge = EdgeModel(load_model("resnet18", "none"), ImageLimits(), engine="onnxruntime", onnx_dir=export_dir)
    route = ort_edge.route_for("layer3", "fp32")
    assert isinstance(ort_edge._split(route.cut)[0], OrtTorchHalf)
    want, got = torch_edge.prepare(jpegs, route), ort_edge.prepare(jpegs, route)
    assert (want.head_outputs[0] - got.head_outputs[0]).abs().max() <= 1e-4

    torch_cloud = CloudModel(load_model("resnet18", "none"))
    ort_cloud = CloudModel(load_model("resnet18", "none"), engine="onnxruntime", onnx_dir=export_dir)
    tail_input = ort_cloud.decode(got.payload)
    assert tail_input.cut == "layer3"
    (ours,) = ort_cloud.run("layer3", [tail_input.tensors])
    (theirs,) = torch_cloud.run("layer3", [torch_cloud.decode(want.payload).tensors])
    assert isinstance(ort_cloud.tail("layer3"), OrtTorchHalf)
    assert ours.shape == (2, 1000)
    assert (ours - theirs).abs().max() <= 1e-4
    # a cut without an export in onnx_dir is exported in memory at its first request
    layer2 = torch_cloud.decode(torch_edge.prepare(jpegs, torch_edge.route_for("layer2", "fp32")).payload)
    (ours2,) = ort_cloud.run("layer2", [layer2.tensors])
    (theirs2,) = torch_cloud.run("layer2", [layer2.tensors])
    assert (ours2 - theirs2).abs().max() <= 1e-4


def test_an_export_of_other_weights_stops_the_service(export_dir: Path) -> None:
    other = load_model("resnet18", "none")
    with torch.no_grad():
        next(other.module.parameters()).add_(1.0)
    from dataclasses import replace

    from shared.models import weights_digest

    other = replace(other, digest=weights_digest(other.module))
    with pytest.raises(ModelMismatch, match="weights digest"):
        CloudModel(other, engine="onnxruntime", onnx_dir=export_dir)
    edge = EdgeModel(other, ImageLimits(), engine="onnxruntime", onnx_dir=export_dir)
    with pytest.raises(ModelMismatch, match="weights digest"):
        edge.build(edge.route_for("layer3", "fp32"))  # at startup: the edge's first route is built before serving
