"""Tables for people: boxed to the terminal's width on a TTY, full-width Markdown everywhere else.

Names in these tables (cuts, codecs) are meant to be copied into flags, so they are never truncated: when
standard output is a pipe or a file the table is Markdown with every cell whole; ``--width`` fixes the
width of the boxed table instead (rich still never cuts a name, it wraps it).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

__all__ = ["Column", "print_table"]


@dataclass(frozen=True)
class Column:
    header: str
    numeric: bool = False
    #: Names the user copies: never cut (folded onto more lines on a narrow terminal).
    names: bool = field(default=False)


def _markdown(title: str, columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [f"{title}", "", "| " + " | ".join(cell(c.header) for c in columns) + " |"]
    lines.append("|" + "|".join("---:" if c.numeric else ":---" for c in columns) + "|")
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def print_table(
    title: str,
    columns: Sequence[Column],
    rows: Sequence[Sequence[str]],
    *,
    width: int | None = None,
    stream: TextIO | None = None,
) -> None:
    """Print a table: rich's boxes on a terminal (or when ``width`` is given), Markdown otherwise."""
    stream = stream or sys.stdout
    if width is None and not stream.isatty():
        print(_markdown(title, columns, rows), file=stream)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(
            column.header,
            justify="right" if column.numeric else "left",
            overflow="fold" if column.names else "ellipsis",
            no_wrap=not column.names and column.numeric,
        )
    for row in rows:
        table.add_row(*row)
    Console(width=width, file=stream).print(table)
