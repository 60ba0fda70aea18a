"""Every ``splitinfer`` command line the docs show parses: its command and flags exist, with valid values."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from splitinfer.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = ["README.md", "ARCHITECTURE.md", "docs/benchmarks.md", "docs/hardening.md"]
_COMMAND = r"splitinfer (?:cuts|codecs|cloud|edge|up|demo|bench|profile|plan|export|classify)\b"


def _command_lines() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        lines = [
            line
            for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
            for line in block.replace("\\\n", " ").splitlines()
        ]
        lines += re.findall(rf"`([^`\n]*{_COMMAND}[^`\n]*)`", text)
        for line in lines:
            command = re.search(rf"(?:^|[\s/])({_COMMAND}[^#`]*)", line)
            if command is None:
                continue
            shown = command[1].strip()
            # NOTE: synopses (`[--single]`, `C|all`, `...`) and bare mentions are not command lines to run.
            if not re.search(r"\[|\||\.\.\.|`", shown) and len(shown.split()) > 2 and "--help" not in shown:
                found.append((doc, shown))
    return sorted(set(found))


COMMANDS = _command_lines()


def test_the_docs_show_command_lines() -> None:
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize(("doc", "line"), COMMANDS, ids=[f"{d}:{c[:60]}" for d, c in COMMANDS])
def test_a_command_line_the_docs_show_parses(doc: str, line: str) -> None:
    argv = shlex.split(line)[1:]
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser(argv[0]).parse_args(argv)
        except SystemExit:
            pytest.fail(f"{doc}: {line!r}: {errors.getvalue().strip()}")
