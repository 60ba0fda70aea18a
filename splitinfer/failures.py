"""Expected failures of the command line, each turned into one line: what went wrong and what to do.

:class:`CliError` is raised where the CLI knows the cause (a file that is missing, an edge that does not
answer); :func:`explain` renders it and the few library errors whose message is already meant for people
(``ValueError`` from model, cut and codec checks; pydantic's settings errors; ``OSError`` on a path).
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import re
import signal
import sys
from typing import Any

__all__ = ["CliError", "exit_reason", "explain", "failure_line", "first_line", "one_line", "startup_failure"]

_CONTROL = re.compile(r"\x1b\[[0-9;]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")


class CliError(Exception):
    """An expected failure; ``str()`` says what went wrong and what to do."""


def exit_reason(returncode: int) -> str:
    """How a child process ended, in words (``killed by SIGKILL``, ``exit status 3``)."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def one_line(text: str) -> str:
    """``text`` with its whitespace runs (newlines included) folded into single spaces."""
    return " ".join(text.split())


def first_line(text: str) -> str:
    """The first non-blank line of ``text``, without terminal escapes and control characters, its whitespace
    folded (torch's unpickling error spans a dozen lines and sets bold text with ANSI escapes)."""
    for line in _CONTROL.sub("", text.replace("\r", "\n")).splitlines():
        if line.strip():
            return one_line(line)
    return ""


def failure_line(prog: str, message: str) -> str:
    """How a command line reports an expected failure on stderr: one line, with the hint to see more."""
    return f"{prog}: error: {message} (--debug shows the traceback)"


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
    if isinstance(exc, FileExistsError):  # NOTE: a folder to make where a file is
        return one_line(f"{exc.filename} exists and is not a folder")
    if isinstance(exc, PermissionError):
        return one_line(f"permission denied: {exc.filename}")
    if isinstance(exc, UnicodeDecodeError):
        return one_line(f"cannot read a file as text: {exc.reason}")
    if isinstance(exc, ValueError):  # model, cut, codec, unit and profile checks word theirs for people
        return one_line(str(exc))
    return None


def startup_failure(exc: BaseException) -> str | None:
    """The one line for a service whose startup raised ``exc``: its type and the first line of its message,
    or None for a bug (which keeps its traceback). Settings errors and :class:`CliError` read as :func:`explain`
    words them."""
    message = explain(exc)
    if message is None or isinstance(exc, CliError) or _is_validation_error(exc):
        return message
    errors = sys.modules.get("shared.errors")
    text = exc.detail if errors is not None and isinstance(exc, errors.SplitInferError) else str(exc)
    return f"{type(exc).__name__}: {first_line(text) or message}"
