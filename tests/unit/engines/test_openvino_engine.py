"""Engine openvino: edge heads and cloud tails compiled by OpenVINO agree with torch within 1e-4 at f32.

Skipped where openvino is not installed (the project's `openvino` extra).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("openvino", reason="engine openvino needs the `openvino` extra")

from cloud_service.runtime import CloudModel
from edge_service.runtime import EdgeModel
from shared.engines import EngineUnavailable, engine_options
from shared.models import load_model
from shared.ort_torch import OrtTorchHalf
from shared.ov_engine import OvHalf, OvOptions, check_precision, cpu_capabilities
from shared.planning import Profile, profile_model
from shared.preprocessing import ImageLimits
from splitinfer.samples import encode_image, synthetic_image


def test_edge_and_cloud_on_openvino_match_torch_at_f32(export_dir: Path) -> None:
    jpegs = [encode_image(synthetic_image(seed=s)) for s in range(3)]
    torch_edge = EdgeModel(load_model("resnet18", "none"), ImageLimits())
    ov_edge = EdgeModel(load_model("resnet18", "none"), ImageLimits(), engine="openvino", onnx_dir=export_dir)
    route = ov_edge.route_for("layer3", "fp32")
    head = ov_edge._split(route.cut)[0]
    assert isinstance(head, OrtTorchHalf) and isinstance(head.half, OvHalf)
    assert head.half.precision == "f32"
    want, got = torch_edge.prepare(jpegs, route), ov_edge.prepare(jpegs, route)
    assert (want.head_outputs[0] - got.head_outputs[0]).abs().max() <= 1e-4

    torch_cloud = CloudModel(load_model("resnet18", "none"))
    ov_cloud = CloudModel(load_model("resnet18", "none"), engine="openvino", onnx_dir=export_dir)
    tail_input = ov_cloud.decode(got.payload)
    single = tail_input.tensors[0][:1]
    # the cloud's batched tail: two requests (3 images and 1) merged into one run of the compiled model
    ours, ours_single = ov_cloud.run("layer3", [tail_input.tensors, (single,)])
    theirs = torch_cloud.run("layer3", [torch_cloud.decode(want.payload).tensors])[0]
    tail = ov_cloud.tail("layer3")
    assert isinstance(tail, OrtTorchHalf) and isinstance(tail.half, OvHalf)
    assert ours.shape == (3, 1000) and ours_single.shape == (1, 1000)
    assert (ours - theirs).abs().max() <= 1e-4
    assert (ours_single[0] - ours[0]).abs().max() <= 1e-4
    # a cut without an export in onnx_dir is exported in memory at its first request
    layer2 = torch_cloud.decode(torch_edge.prepare(jpegs, torch_edge.route_for("layer2", "fp32")).payload)
    (ours2,) = ov_cloud.run("layer2", [layer2.tensors])
    (theirs2,) = torch_cloud.run("layer2", [layer2.tensors])
    assert (ours2 - theirs2).abs().max() <= 1e-4


def test_infer_requests_are_pooled_and_bounded(export_dir: Path) -> None:
    half = OvHalf(export_dir / "layer3" / "tail.onnx", OvOptions(requests=2))
    generator = torch.Generator().manual_seed(3)
    inputs = [torch.randn(1 + i % 3, 256, 14, 14, generator=generator).numpy() for i in range(8)]
    expected = [half(x)[0] for x in inputs]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def call(index: int) -> None:
        try:
            for _ in range(3):
                results[index] = half(inputs[index])[0]
        except BaseException as exc:  # NOTE: reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert half.requests_made <= 2
    for index, want in enumerate(expected):
        assert np.array_equal(results[index], want)


def test_bf16_is_refused_on_a_cpu_without_it() -> None:
    with pytest.raises(EngineUnavailable, match="bfloat16"):
        check_precision("bf16", ("FP32", "INT8"))
    with pytest.raises(EngineUnavailable, match="unknown openvino precision"):
        check_precision("fp8", ("FP32", "BF16"))
    check_precision("bf16", ("FP32", "BF16"))
    check_precision("f32", ("FP32",))
    with pytest.raises(EngineUnavailable, match="CPU"):
        engine_options("openvino", device="cuda")


def test_a_service_asked_for_bf16_on_a_cpu_without_it_does_not_start(monkeypatch: pytest.MonkeyPatch) -> None:
    import shared.engines

    monkeypatch.setattr(shared.engines, "cpu_capabilities", lambda: ("FP32", "INT8"))
    with pytest.raises(EngineUnavailable, match="bfloat16"):
        CloudModel(load_model("tests.fixture_models:tiny_cnn", "none"), engine="openvino", openvino_precision="bf16")
    with pytest.raises(EngineUnavailable, match="bfloat16"):
        EdgeModel(
            load_model("tests.fixture_models:tiny_cnn", "none"),
            ImageLimits(),
            engine="openvino",
            openvino_precision="bf16",
        )


@pytest.mark.skipif("BF16" not in cpu_capabilities(), reason="this CPU has no bfloat16 instructions")
def test_bf16_runs_where_the_cpu_has_it(export_dir: Path) -> None:
    path = export_dir / "layer3" / "tail.onnx"
    exact, bf16 = OvHalf(path), OvHalf(path, OvOptions(precision="bf16"))
    assert bf16.precision == "bf16"
    x = torch.randn(2, 256, 14, 14, generator=torch.Generator().manual_seed(5)).relu().numpy()
    want, got = exact(x)[0], bf16(x)[0]
    relative = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    assert 0 < relative < 2e-2  # NOTE: not exact; docs/benchmarks.md states the tolerance and top-1 agreement


def test_profile_with_openvino_records_engine_and_precision(tmp_path: Path) -> None:
    loaded = load_model("tests.fixture_models:tiny_cnn", "none")
    profile = profile_model(loaded, [encode_image(synthetic_image())], repeats=1, engine="openvino")
    assert (profile.engine, profile.precision, profile.engine_label) == ("openvino", "f32", "openvino")
    stem = next(c for c in profile.cuts if c.name == "stem")
    # float32 throughout: the fp32 payload's logits are torch's within float32 rounding of other kernels
    assert next(p for p in stem.codecs if p.codec == "fp32").relative_l2_error < 1e-5
    profile.save(tmp_path / "profile.json")
    assert Profile.load(tmp_path / "profile.json") == profile


def test_each_head_worker_gets_a_stream_of_its_own(export_dir: Path) -> None:
    # OpenVINO's CPU plugin runs one inference at a time per stream: with one stream, the edge's two
    # one-thread head workers queued behind each other and served like one.
    half = OvHalf(export_dir / "layer3" / "tail.onnx", OvOptions(threads=1, streams=2, requests=1))
    assert int(half.compiled.get_property("NUM_STREAMS")) == 2
    assert int(half.compiled.get_property("INFERENCE_NUM_THREADS")) == 2
    edge = EdgeModel(
        load_model("resnet18", "none"), ImageLimits(), engine="openvino", onnx_dir=export_dir, head_workers=2
    )
    head = edge._split(edge.route_for("layer3", "fp32").cut)[0]
    assert isinstance(head, OrtTorchHalf) and isinstance(head.half, OvHalf)
    assert int(head.half.compiled.get_property("NUM_STREAMS")) == 2
    # as many infer requests as streams, whatever the pool size says, so every stream can be busy
    x = np.zeros((1, 256, 14, 14), dtype=np.float32)
    calls = [threading.Thread(target=half, args=(x,)) for _ in range(4)]
    for call in calls:
        call.start()
    for call in calls:
        call.join(timeout=120)
    assert 1 <= half.requests_made <= 2
