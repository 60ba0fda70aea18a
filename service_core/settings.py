"""Settings both services share. Each service subclasses :class:`ServiceSettings`; every field is also a
``SPLITINFER_<NAME>`` environment variable and a ``--name`` flag of the ``splitinfer`` CLI."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from shared.models import LoadedModel

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
    token: SecretStr | None = Field(
        None, description="Shared bearer token: the cloud requires it on /v1/*, the edge sends it. Never logged."
    )
    token_file: Path | None = Field(None, description="A file holding the token (instead of TOKEN).")
    ssl_certfile: Path | None = Field(None, description="Serve HTTPS with this certificate (PEM).")
    ssl_keyfile: Path | None = Field(None, description="The certificate's private key (PEM).")
    engine: Literal["torch", "onnxruntime"] = Field(
        "torch",
        description="What runs this side's half: torch, or onnxruntime (from ONNX_DIR's verified export of the cut, "
        "else exported when the cut is first built; CUDA execution provider on a cuda DEVICE where available).",
    )
    onnx_dir: Path | None = Field(None, description="Folder written by `splitinfer export` (engine onnxruntime).")
    onnx_threads: int = Field(1, ge=1, description="Intra-op threads of each ONNX Runtime session (onnxruntime).")
    max_body_bytes_in_flight: int = Field(
        256 * 1024 * 1024,
        ge=1,
        description="Request body bytes the service admits at once (Content-Length, or the route's limit when "
        "none is declared); beyond it new requests get 503 + Retry-After before their body is read.",
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="A request body must arrive within this many seconds (408 otherwise)."
    )
    max_batch_pixels: int = Field(
        120_000_000, ge=1, description="Pixels of all images of one request together, checked before decoding."
    )
    drain_s: float = Field(
        1.0, ge=0, description="On SIGTERM: seconds /readyz answers 503 before the server stops accepting."
    )

    @field_validator("weights")
    @classmethod
    def _weights_exist(cls, value: str) -> str:
        if value.upper() == "DEFAULT" or value.lower() == "none":
            return value
        if not Path(value).is_file():
            raise ValueError(f"weights file {value!r} does not exist (use DEFAULT, none or a state_dict path)")
        return value

    @model_validator(mode="after")
    def _secrets_and_certificates(self) -> ServiceSettings:
        if self.token is not None and self.token_file is not None:
            raise ValueError("give TOKEN or TOKEN_FILE, not both")
        if self.token_file is not None and not self.token_file.is_file():
            raise ValueError(f"token file {str(self.token_file)!r} does not exist")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("HTTPS needs both SSL_CERTFILE and SSL_KEYFILE")
        for path in (self.ssl_certfile, self.ssl_keyfile):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file {str(path)!r} does not exist")
        return self

    def load_model(self) -> LoadedModel:
        """Set torch's intra-op threads and load the model with its weights (random, with a loud error, when
        DEFAULT weights cannot be obtained)."""
        import torch

        from shared.models import load_model

        if self.threads:
            torch.set_num_threads(self.threads)
        return load_model(self.model, self.weights, fallback_to_random=True)

    def shared_token(self) -> str | None:
        """The bearer token, from TOKEN or TOKEN_FILE (stripped), or None when auth is off."""
        if self.token is not None:
            return self.token.get_secret_value().strip() or None  # NOTE: TOKEN="" means no token, not an empty one
        if self.token_file is not None:
            return self.token_file.read_text().strip() or None
        return None

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError(f"device {value!r} is not cpu, cuda or cuda:N")
        return value
