"""``run_service`` turns a lifespan's startup error into one line (its type and the first line of its
message), whatever the message spans; a bug keeps its traceback and uvicorn's exit status."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from starlette.applications import Starlette

from service_core.settings import ServiceSettings
from splitinfer.failures import CliError, first_line, startup_failure
from splitinfer.processes import free_port
from splitinfer.serve import run_service

# NOTE: shaped like torch's unpickling error: bold text in ANSI escapes, tab-indented lines, a URL last.
MULTI_LINE = (
    "Weights only load failed. Do \x1b[1mthis\x1b[0m only if you trust it. \n"
    "\t(1) Re-running `torch.load` will likely succeed.\n\n"
    "Check the documentation of torch.load: https://pytorch.org/docs/stable/generated/torch.load.html."
)


def _failing_app(error: BaseException) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        raise error
        yield  # pragma: no cover

    return Starlette(lifespan=lifespan)


def _settings() -> ServiceSettings:
    return ServiceSettings(port=free_port(), drain_s=0, log_level="warning")


def test_a_multi_line_startup_error_is_its_type_and_first_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(CliError) as raised:
        run_service(_failing_app(ValueError(MULTI_LINE)), _settings())
    assert str(raised.value) == (
        "the service did not start: ValueError: Weights only load failed. Do this only if you trust it."
    )
    assert "Traceback" not in capsys.readouterr().err


def test_a_bug_at_startup_keeps_its_traceback_and_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        run_service(_failing_app(RuntimeError("a bug\non two lines")), _settings())
    assert raised.value.code == 3
    err = capsys.readouterr().err
    assert "the service did not start" in err and "Traceback" in err and "RuntimeError: a bug" in err


def test_debug_hands_uvicorn_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run_service(_failing_app(ValueError(MULTI_LINE)), _settings(), debug=True)
    err = capsys.readouterr().err
    assert "Traceback" in err and "\t(1) Re-running" in err


def test_first_line_and_startup_failure() -> None:
    assert first_line("\n  \r\n  a\x1b[1mb\x1b[0m \x07c\t d \nsecond") == "ab c d"
    assert startup_failure(FileNotFoundError(2, "No such file or directory", "w.pt")) == (
        "FileNotFoundError: [Errno 2] No such file or directory: 'w.pt'"
    )
    assert startup_failure(CliError("already\none line")) == "already one line"
    assert startup_failure(KeyError("a bug")) is None
