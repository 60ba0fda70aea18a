"""Command-line flags generated from a settings class, so every setting is a flag without being written twice."""

from __future__ import annotations

import argparse
from typing import Any

from pydantic_settings import BaseSettings

from service_core.serving import ENV_PREFIX

__all__ = ["add_settings_flags", "settings_from_args"]


def add_settings_flags(parser: argparse.ArgumentParser, settings_cls: type[BaseSettings]) -> None:
    group = parser.add_argument_group("settings (flags override SPLITINFER_* environment variables)")
    for name, field in settings_cls.model_fields.items():
        env = ENV_PREFIX + name.upper()
        default = "required" if field.is_required() else field.default if field.default is not None else "unset"
        switch = field.annotation is bool
        group.add_argument(
            f"--{name.replace('_', '-')}",
            dest=f"setting_{name}",
            default=argparse.SUPPRESS,
            nargs="?" if switch else None,
            const="true" if switch else None,
            metavar="BOOL" if switch else name.upper(),
            help=f"{field.description or ''} [{env}; default: {default}]".replace("%", "%%"),
        )


def settings_from_args(settings_cls: type[BaseSettings], args: argparse.Namespace) -> Any:
    overrides = {key.removeprefix("setting_"): value for key, value in vars(args).items() if key.startswith("setting_")}
    return settings_cls(**overrides)
