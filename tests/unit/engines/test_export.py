"""ONNX export of resnet18 halves (a sample of cuts; the full sweep is tests/unit/engines/test_export_sweep.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.engines import OrtHalf
from shared.errors import ModelMismatch
from shared.models import load_model
from shared.onnx_export import export_split
from shared.onnx_manifest import HEAD_FILE, TAIL_FILE, Manifest
from shared.splitting import ModelGraph
from splitinfer.cli import main

SAMPLE_CUTS = ["input", "layer1", "layer3", "avgpool", "output"]


@pytest.fixture(scope="module")
def resnet18() -> tuple[object, ModelGraph]:
    loaded = load_model("resnet18", "none")
    return loaded, ModelGraph(loaded.module, loaded.input_shape)


@pytest.mark.parametrize("cut", SAMPLE_CUTS)
def test_halves_match_torch(resnet18: tuple[object, ModelGraph], cut: str, tmp_path: Path) -> None:
    _, graph = resnet18
    exported = export_split(graph, cut, model="resnet18", weights="sha256:x", preprocessing={})
    manifest = exported.manifest
    assert manifest.head.max_abs_error <= 1e-4 and manifest.tail.max_abs_error <= 1e-4
    names = [t.name for t in graph.cut(cut).tensors]
    assert [t.name for t in manifest.head.outputs] == names == [t.name for t in manifest.tail.inputs]
    # independent check at a batch size the export did not use (the batch axis is dynamic)
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(7))
    head, tail = graph.split(cut)
    with torch.no_grad():
        crossing = head(x)
        want = tail(*(t.clone() for t in crossing))
    ort_head, ort_tail = OrtHalf(exported.head), OrtHalf(exported.tail)
    got_crossing = ort_head(x.numpy())
    assert ort_head.output_names == tuple(names) == ort_tail.input_names
    for ours, theirs in zip(got_crossing, crossing, strict=True):
        assert np.abs(ours - theirs.numpy()).max() <= 1e-4
    (logits,) = ort_tail(*got_crossing)
    assert logits.shape == (3, 1000)
    assert np.abs(logits - want.numpy()).max() <= 1e-4


def test_manifest_is_verified(resnet18: tuple[object, ModelGraph], tmp_path: Path) -> None:
    _, graph = resnet18
    exported = export_split(graph, "layer3", model="resnet18", weights="sha256:abc", preprocessing={"crop_size": 224})
    exported.write(tmp_path)
    manifest = Manifest.read(tmp_path)
    assert manifest == exported.manifest
    manifest.verify(tmp_path, model="resnet18", weights="sha256:abc", cut="layer3")
    with pytest.raises(ModelMismatch, match="weights digest"):
        manifest.verify(tmp_path, weights="sha256:other")
    with pytest.raises(ModelMismatch, match="cut"):
        manifest.verify(tmp_path, cut="layer2")
    other = export_split(graph, "layer2", model="resnet18", weights="sha256:abc", preprocessing={}).manifest
    with pytest.raises(ModelMismatch, match="do not match the cut's tensors"):
        manifest.verify(tmp_path, cut_tensors=other.cut_tensors)
    tampered = bytearray((tmp_path / TAIL_FILE).read_bytes())
    tampered[-1] ^= 1
    (tmp_path / TAIL_FILE).write_bytes(bytes(tampered))
    manifest.verify(tmp_path, halves=("head",))
    with pytest.raises(ModelMismatch, match="digest"):
        manifest.verify(tmp_path)
    (tmp_path / HEAD_FILE).unlink()
    with pytest.raises(ModelMismatch, match="lacks"):
        manifest.verify(tmp_path, halves=("head",))


def test_manifest_refuses_paths_outside_its_folder(resnet18: tuple[object, ModelGraph], tmp_path: Path) -> None:
    _, graph = resnet18
    raw = export_split(graph, "layer4", model="resnet18", weights="sha256:x", preprocessing={}).manifest.to_json()
    raw["head"]["file"] = "../x.onnx"
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="plain file name"):
        Manifest.read(tmp_path)


def test_cli_export_writes_a_verified_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "resnet18", "--cut", "layer4", "--out", str(tmp_path)]) == 0
    assert "head max |err|" in capsys.readouterr().out
    manifest = Manifest.read(tmp_path)
    loaded = load_model("resnet18", "none")
    manifest.verify(tmp_path, model="resnet18", weights=loaded.digest, cut="layer4")
    assert manifest.preprocessing == loaded.preprocessor.to_json()
    assert manifest.cut_tensors[0].shape == ("batch", 512, 7, 7)
    assert main(["export", "resnet18", "--cut", "layer9", "--out", str(tmp_path)]) == 2
