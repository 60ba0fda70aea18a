"""Checks the CLI runs before the expensive part, so that a mistake is one line, not a server's traceback."""

from __future__ import annotations

import difflib
import socket
from pathlib import Path
from typing import Any

from splitinfer.failures import CliError

__all__ = ["check_device", "check_model_name", "check_port_free", "load_profile", "refuse_a_bound_port"]


def check_model_name(name: str) -> None:
    """Refuse an unknown torchvision model name, suggesting the closest ones (``package.module:factory``,
    ``timm/NAME`` and the built-in real-weight models pass: their loaders say what is wrong with them)."""
    from shared.models import LITE0

    if ":" in name or name.startswith("timm/") or name == LITE0:
        return
    from torchvision import models

    known = [*models.list_models(module=models), LITE0]
    if name in known:
        return
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise CliError(
        f"unknown model {name!r}: {hint}use a torchvision classification model name "
        "(python -c 'import torchvision; print(torchvision.models.list_models(module=torchvision.models))'), "
        f"timm/NAME, {LITE0} or 'package.module:factory'"
    )


def check_device(device: str) -> None:
    """Refuse ``cuda``/``cuda:N`` when torch sees no such GPU."""
    if not device.startswith("cuda"):
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.partition(":")[2] or 0)
    if count == 0:
        raise CliError(f"device {device!r} asked for, but torch sees no CUDA GPU here; use --device cpu")
    if index >= count:
        raise CliError(f"device {device!r} asked for, but torch sees {count} GPU(s): use cuda:0..cuda:{count - 1}")


def check_port_free(host: str, port: int, flag: str) -> None:
    """Refuse a port something already listens on (another ``splitinfer up`` or ``demo``, most often), or none."""
    if not 0 < port < 65536:  # NOTE: bind() raised OverflowError, a traceback
        raise CliError(f"{flag} {port} is not a port: use 1-65535")
    refuse_a_bound_port(host, port, "another `splitinfer up` or `demo`?", flag)


def refuse_a_bound_port(host: str, port: int, suspect: str, flag: str) -> None:
    """A :class:`CliError` naming ``suspect`` and ``flag`` when something is bound to ``port`` on ``host``."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        # NOTE: as uvicorn binds: connections of a service just stopped, left in TIME_WAIT for a minute,
        # do not hold the port (without it `up` refused the port its last run served on); a listener still does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise CliError(
                f"port {port} on {host} is already in use ({exc.strerror}): stop what listens there "
                f"({suspect}) or pass {flag} with a free port"
            ) from exc


def load_profile(path: str, which: str) -> Any:
    """``Profile.load`` with one-line failures naming the file and how to write one."""
    from shared.planning import Profile

    how = f"write one with `splitinfer profile -o {path}`"
    if Path(path).is_dir():
        raise CliError(f"{which} profile {path!r} is a directory, not a file: {how}, or name the file in it")
    if not Path(path).is_file():
        raise CliError(f"{which} profile {path!r} does not exist: {how}")
    try:
        return Profile.load(path)
    except (ValueError, KeyError, TypeError) as exc:
        raise CliError(f"{which} profile {path!r} is not a `splitinfer profile` output ({exc!r}): {how}") from exc
