"""`splitinfer profile` records what its codec errors were measured on, and says so when that was generated
pictures and the weights are trained (the fidelity guard then understates real photos' errors)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shared.models import load_model
from shared.planning import GENERATED_IMAGES, Profile
from splitinfer.cli import main
from splitinfer.samples import encode_image, synthetic_image

TINY = "tests.fixture_models:tiny_cnn"


@pytest.fixture(scope="module")
def trained_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state_dict file: weights the edge treats as trained (not random)."""
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save(load_model(TINY, "none").module.state_dict(), path)
    return path


def _profile(argv: list[str], capsys: pytest.CaptureFixture[str], out: Path) -> tuple[Profile, str]:
    assert main(["profile", "--model", TINY, "--repeats", "1", "-o", str(out), *argv]) == 0
    return Profile.load(out), capsys.readouterr().err


def test_generated_pictures_with_trained_weights_are_recorded_and_noted(
    trained_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profile, err = _profile(["--weights", str(trained_weights)], capsys, tmp_path / "p.json")
    assert profile.images == GENERATED_IMAGES
    assert "measured on generated pictures" in err and "--images DIR" in err


def test_photos_given_are_recorded_and_no_note(
    trained_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for seed in range(2):
        (photos / f"{seed}.jpg").write_bytes(encode_image(synthetic_image(96, 80, seed=seed)))
    profile, err = _profile(["--weights", str(trained_weights), "--images", str(photos)], capsys, tmp_path / "p.json")
    assert profile.images == str(photos)
    assert "generated pictures" not in err


def test_a_folder_of_photos_named_generated_is_not_taken_for_generated_pictures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--images generated`` (a folder of photos in the working directory) recorded ``images: generated``:
    the planner counted the photos' errors twice and the notes called them generated pictures."""
    monkeypatch.chdir(tmp_path)
    photos = tmp_path / GENERATED_IMAGES
    photos.mkdir()
    (photos / "0.jpg").write_bytes(encode_image(synthetic_image(96, 80, seed=0)))
    profile, _ = _profile(["--weights", "none", "--images", GENERATED_IMAGES], capsys, tmp_path / "p.json")
    assert profile.images == f"./{GENERATED_IMAGES}"
    assert profile.error_factor == 1.0
