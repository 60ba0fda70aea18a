"""Tables piped or redirected are full-width Markdown: the names a user copies are never cut."""

from __future__ import annotations

import io

import pytest

from splitinfer.cli import main
from splitinfer.plot import NO_CODEC_LABEL, series
from splitinfer.tables import Column, print_table


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_a_tty_gives_markdown_with_whole_names() -> None:
    stream = io.StringIO()
    name = "encoder.layers.encoder_layer_11.mlp.dropout_of_a_very_long_name"
    print_table("t", [Column("cut", names=True), Column("KiB", numeric=True)], [[name, "1.0"]], stream=stream)
    assert stream.getvalue().splitlines() == ["t", "", "| cut | KiB |", "|:---|---:|", f"| {name} | 1.0 |"]


def test_a_narrow_terminal_folds_names_instead_of_cutting_them() -> None:
    stream = _Tty()
    name = "encoder.layers.encoder_layer_11.mlp"
    columns = [Column("cut", names=True), Column("codec", names=True)]
    print_table("t", columns, [[name, "int8+zstd"]], width=30, stream=stream)
    text = stream.getvalue()
    assert "…" not in text
    assert "int8+zstd" in text
    assert "encoder.layers" in text
    assert "_11.mlp" in text


def test_cuts_piped_lists_every_cut_in_markdown(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cuts", "resnet18", "--single"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2] == "| # | cut | tensors alive | KiB fp32 | head FLOPs |"
    assert out[-1].startswith("| ") and "| output | 1x1000 |" in out[-1]
    assert not any("…" in line for line in out)


def test_plot_series_follow_execution_order_and_name_the_output_cut() -> None:
    class Row:
        def __init__(self, cut: str, codec: str, latency_ms: float) -> None:
            self.cut, self.codec, self.latency_ms = cut, codec, latency_ms

    order = {"input": 0, "conv1": 1, "layer1": 5, "avgpool": 9, "output": 10}
    rows = [
        Row("avgpool", "fp16", 3.0),
        Row("conv1", "fp16", 1.0),
        Row("layer1", "fp16", 2.0),
        Row("output", None, 4.0),
    ]
    lines = series(rows, order)
    assert lines == {"fp16": [(1, 1.0), (5, 2.0), (9, 3.0)], NO_CODEC_LABEL: [(10, 4.0)]}
    assert "-" not in lines
