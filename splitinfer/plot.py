"""The plan's plot: predicted latency of every cut, in execution order, one line per codec."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from splitinfer.failures import CliError

__all__ = ["NO_CODEC_LABEL", "plot_plan", "require_matplotlib", "series"]

#: The label of cuts that ship nothing (``output``: the edge runs the whole model).
NO_CODEC_LABEL = "output (edge only)"


def require_matplotlib() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or a CliError saying which extra installs it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise CliError(
            "--plot needs matplotlib, which is not installed: pip install 'split-inference[plot]' "
            "(or .venv/bin/pip install -e '.[plot]' in a checkout)"
        ) from exc
    return plt


def series(rows: Sequence[Any], order: Mapping[str, int]) -> dict[str, list[tuple[int, float]]]:
    """Per codec label, (execution position, latency ms) points sorted by position.

    ``order`` maps cut names to their execution index (the profile's ``index``); rows whose codec is ``-``
    (no payload) are labelled :data:`NO_CODEC_LABEL`.
    """
    lines: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        label = NO_CODEC_LABEL if row.codec is None else row.codec
        lines.setdefault(label, []).append((order[row.cut], row.latency_ms))
    return {label: sorted(points) for label, points in sorted(lines.items())}


def plot_plan(rows: Sequence[Any], order: Mapping[str, int], path: str, title: str) -> None:
    """Write a PNG of predicted latency by cut (x: cuts in execution order)."""
    plt = require_matplotlib()
    names = sorted({row.cut for row in rows}, key=lambda name: order[name])
    position = {name: i for i, name in enumerate(names)}
    figure, axes = plt.subplots(figsize=(max(8.0, 0.25 * len(names)), 4.5))
    for label, points in series(rows, {name: position[name] for name in names}).items():
        single = len(points) == 1
        axes.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            marker="*" if single else "o",
            markersize=12 if single else 4,
            linestyle="none" if single else "-",
            label=label,
        )
    axes.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    axes.set_xlabel("cut (execution order)")
    axes.set_ylabel("predicted latency (ms)")
    axes.set_title(title)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
