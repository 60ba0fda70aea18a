"""Counts, times and paths that cannot work are one line on stderr and exit status 2, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitinfer.cli import main
from splitinfer.failures import explain


def _failure(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith("splitinfer: error: ")
    return lines[0]


# Before: `--requests -5`, `--duration -1` and `--concurrency 0` measured nothing and exited 0 with a table of
# nan; `--count 0` and `--per-request 0` were tracebacks (ZeroDivisionError, an empty torch.stack);
# `--per-request 100000` preprocessed 800,000 images client-side.
@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--requests", "-5"], "--requests"),
        (["--requests", "0"], "--requests"),
        (["--duration", "-1"], "--duration"),
        (["--duration", "nan"], "--duration"),
        (["--duration", "inf"], "--duration"),
        (["--warmup", "-1"], "--warmup"),
        (["--concurrency", "0"], "--concurrency"),
        (["--target", "local", "--count", "0", "--requests", "2"], "--count"),
        (["--target", "cloud", "--per-request", "0", "--requests", "2"], "--per-request"),
        (["--target", "cloud", "--per-request", "100000", "--requests", "2"], "--per-request"),
    ],
)
def test_bench_refuses_counts_that_cannot_work(capsys: pytest.CaptureFixture[str], args: list[str], named: str) -> None:
    line = _failure(capsys, ["bench", "--url", "http://127.0.0.1:1", *args])
    assert named in line


def test_bench_names_an_images_folder_that_holds_none(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert "holds no" in _failure(capsys, ["bench", "--url", "http://127.0.0.1:1", "--images", str(tmp_path)])
    missing = tmp_path / "missing"
    assert "does not exist" in _failure(capsys, ["bench", "--url", "http://127.0.0.1:1", "--images", str(missing)])


def test_export_into_a_file_is_refused_before_the_export(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # Before: the export ran, then mkdir raised FileExistsError with a traceback.
    out = tmp_path / "a-file"
    out.write_text("x")
    line = _failure(capsys, ["export", "resnet18", "--weights", "none", "--cut", "layer1", "--out", str(out)])
    assert "is a file" in line


def test_a_folder_to_make_where_a_file_is_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError) as caught:
        (tmp_path / "f").mkdir(parents=True, exist_ok=True)
    assert explain(caught.value) == f"{tmp_path / 'f'} exists and is not a folder"
