"""`splitinfer plan --plot`: an error without matplotlib; with it, cuts in execution order and real labels."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from shared.planning import CodecProfile, CutProfile, Profile
from splitinfer.cli import main

# NOTE: execution order on purpose far from alphabetical (avgpool < conv1 < input < layer1 < output).
NAMES = ["input", "conv1", "layer1", "avgpool", "output"]


def _profile(tmp_path: Path, side: str) -> str:
    cuts = []
    for index, name in enumerate(NAMES):
        codecs = () if name == "output" else (CodecProfile("fp16", 1000.0 * (5 - index), 0.1, 0.1, 0.0),)
        if name == "input":
            codecs = (CodecProfile("image", 20_000, 0.0, 1.0, 0.0),)
        cuts.append(CutProfile(name, index, float(index), float(5 - index), codecs))
    path = tmp_path / f"{side}.json"
    Profile("m", "sha256:x", "cpu", 1, 224, {}, cuts).save(path)
    return str(path)


def _argv(tmp_path: Path, png: Path) -> list[str]:
    edge, cloud = _profile(tmp_path, "edge"), _profile(tmp_path, "cloud")
    link = ["--bandwidth", "20mbit", "--rtt", "30ms"]
    return ["plan", "--edge-profile", edge, "--cloud-profile", cloud, *link, "--plot", str(png)]


def test_plot_without_matplotlib_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    png = tmp_path / "plan.png"
    assert main(_argv(tmp_path, png)) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "splitinfer: error: --plot needs matplotlib, which is not installed: pip install 'split-inference[plot]' "
        "(or .venv/bin/pip install -e '.[plot]' in a checkout) (--debug shows the traceback)"
    ]
    assert not png.exists()


def test_plot_axes_follow_execution_order_with_real_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    captured: dict[str, list[str]] = {}
    savefig = plt.Figure.savefig

    def spy(figure: plt.Figure, path: str, **kwargs: object) -> None:
        axes = figure.axes[0]
        captured["ticks"] = [t.get_text() for t in axes.get_xticklabels()]
        captured["legend"] = [t.get_text() for t in axes.get_legend().get_texts()]
        savefig(figure, path, **kwargs)

    monkeypatch.setattr(plt.Figure, "savefig", spy)
    png = tmp_path / "plan.png"
    assert main(_argv(tmp_path, png)) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert captured["ticks"] == NAMES
    assert captured["legend"] == ["fp16", "image", "output (edge only)"]


def test_plan_says_on_stderr_when_generated_pictures_tighten_the_guard(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    edge, cloud = _profile(tmp_path, "edge"), _profile(tmp_path, "cloud")
    argv = ["plan", "--edge-profile", edge, "--cloud-profile", cloud, "--bandwidth", "20mbit", "--rtt", "30ms"]
    assert main([*argv, "--json"]) == 0
    assert capsys.readouterr().err == ""  # NOTE: a profile that does not record its images counts them once
    profile = Profile.load(edge)
    profile.images = "generated"
    profile.save(edge)
    assert main([*argv, "--json"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("NOTE: the codec errors in the edge profile were measured on generated pictures")
    assert "exceeds 0.005 are left out" in err
