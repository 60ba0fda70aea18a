"""Settings both services share. Each service subclasses :class:`ServiceSettings`; every field is also a
``SPLITINFER_<NAME>`` environment variable and a ``--name`` flag of the ``splitinfer`` CLI."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ENV_PREFIX", "ServiceSettings"]

ENV_PREFIX = "SPLITINFER_"
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    model: str = Field("resnet18", description="torchvision model name, or 'package.module:factory'.")
    weights: str = Field(
        "DEFAULT",
        description="DEFAULT (pretrained; random with a loud warning when offline), none (random, seed 0), "
        "or a state_dict file.",
    )
    device: str = Field("cpu", description="cpu, cuda or cuda:N.")
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on.")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's choice).")
    max_batch_size: int = Field(32, ge=1, le=1024, description="Most images in one request or model run.")
    log_level: str = Field("info", description="Python log level.")

    @field_validator("weights")
    @classmethod
    def _weights_exist(cls, value: str) -> str:
        if value.upper() == "DEFAULT" or value.lower() == "none":
            return value
        if not Path(value).is_file():
            raise ValueError(f"weights file {value!r} does not exist (use DEFAULT, none or a state_dict path)")
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError(f"device {value!r} is not cpu, cuda or cuda:N")
        return value
