"""Expected failures of the command line, each turned into one line: what went wrong and what to do.

:class:`CliError` is raised where the CLI knows the cause (a file that is missing, an edge that does not
answer); :func:`explain` renders it and the few library errors whose message is already meant for people
(``ValueError`` from model, cut and codec checks; pydantic's settings errors; ``OSError`` on a path).
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["CliError", "explain", "one_line"]


class CliError(Exception):
    """An expected failure; ``str()`` says what went wrong and what to do."""


def one_line(text: str) -> str:
    """``text`` with its whitespace runs (newlines included) folded into single spaces."""
    return " ".join(text.split())


def _validation_message(exc: Any) -> str:
    """pydantic's ``ValidationError`` as ``setting: reason; ...`` without its URLs and input dumps."""
    parts = []
    for error in exc.errors(include_url=False):
        message = str(error.get("msg", "invalid"))
        message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        location = ".".join(str(part) for part in error.get("loc", ()))
        parts.append(f"{location.replace('_', '-')}: {message}" if location else message)
    return "invalid settings: " + "; ".join(parts) + "; see --help"


def _is_validation_error(exc: BaseException) -> bool:
    pydantic = sys.modules.get("pydantic")
    return pydantic is not None and isinstance(exc, pydantic.ValidationError)


def explain(exc: BaseException) -> str | None:
    """The one-line message for an expected failure, or None for a bug (which keeps its traceback)."""
    if isinstance(exc, CliError):
        return one_line(str(exc))
    errors = sys.modules.get("shared.errors")
    if errors is not None and isinstance(exc, errors.SplitInferError):
        return one_line(exc.detail)
    if _is_validation_error(exc):
        return one_line(_validation_message(exc))
    if isinstance(exc, FileNotFoundError):
        return one_line(f"no such file or folder: {exc.filename}")
    if isinstance(exc, IsADirectoryError):
        return one_line(f"{exc.filename} is a folder, not a file")
    if isinstance(exc, NotADirectoryError):
        return one_line(f"{exc.filename} is not a folder")
    if isinstance(exc, PermissionError):
        return one_line(f"permission denied: {exc.filename}")
    if isinstance(exc, UnicodeDecodeError):
        return one_line(f"cannot read a file as text: {exc.reason}")
    if isinstance(exc, ValueError):  # model, cut, codec, unit and profile checks word theirs for people
        return one_line(str(exc))
    return None
