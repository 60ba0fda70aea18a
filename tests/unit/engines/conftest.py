"""Fixtures the engine tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.models import load_model
from shared.onnx_export import export_split
from shared.splitting import ModelGraph


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A verified export of resnet18 (random weights) cut at ``layer3``, as ``splitinfer export`` writes it."""
    loaded = load_model("resnet18", "none")
    graph = ModelGraph(loaded.module, loaded.input_shape)
    out = tmp_path_factory.mktemp("export")
    export_split(
        graph, "layer3", model=loaded.name, weights=loaded.digest, preprocessing=loaded.preprocessor.to_json()
    ).write(out / "layer3")
    return out


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export of the tiny test CNN cut at ``stem``: what the torch-free edge's in-process tests serve."""
    loaded = load_model("tests.fixture_models:tiny_cnn", "none")
    out = tmp_path_factory.mktemp("tiny-export") / "export"
    export_split(
        loaded.graph(), "stem", model=loaded.name, weights=loaded.digest, preprocessing=loaded.preprocessor.to_json()
    ).write(out)
    return out
