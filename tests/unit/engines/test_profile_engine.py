"""Profiles know the engine: a profile is of a model, a cut, a codec and an engine."""

from __future__ import annotations

import json
from pathlib import Path

from shared.models import load_model
from shared.planning import Profile, plan, profile_model
from splitinfer.samples import encode_image, synthetic_image


def test_profile_with_onnxruntime_records_its_engine(tmp_path: Path) -> None:
    loaded = load_model("tests.fixture_models:tiny_cnn", "none")
    images = [encode_image(synthetic_image())]
    profile = profile_model(loaded, images, repeats=1, engine="onnxruntime")
    assert profile.engine == "onnxruntime"
    stem = next(c for c in profile.cuts if c.name == "stem")
    # the ONNX tail decodes the same fp32 payload into the same logits, within float32 rounding
    assert next(p for p in stem.codecs if p.codec == "fp32").relative_l2_error < 1e-6
    path = tmp_path / "profile.json"
    profile.save(path)
    assert Profile.load(path) == profile
    assert plan(profile, profile_model(loaded, images, repeats=1), bandwidth_bps=1e7, rtt_s=0.01)


def test_profiles_written_before_engines_existed_are_torch(tmp_path: Path) -> None:
    loaded = load_model("tests.fixture_models:tiny_cnn", "none")
    raw = profile_model(loaded, [encode_image(synthetic_image())], repeats=1).to_json()
    del raw["engine"]
    (tmp_path / "old.json").write_text(json.dumps(raw))
    assert Profile.load(tmp_path / "old.json").engine == "torch"
