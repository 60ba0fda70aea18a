"""Settings both services share. Each service subclasses :class:`ServiceSettings`; every field is also a
``SPLITINFER_<NAME>`` environment variable and a ``--name`` flag of the ``splitinfer`` CLI. How the process
serves HTTP (address, TLS, draining, keep-alive, connections) is :class:`service_core.serving.ServingSettings`,
which the torch-free edge shares."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from service_core.batch_limit import MAX_BATCH_SIZE_LIMIT
from service_core.serving import ENV_PREFIX, ServingSettings
from service_core.torch_threads import TorchThreads

if TYPE_CHECKING:
    from shared.models import LoadedModel, ModelOptions

__all__ = ["ENV_PREFIX", "ServiceSettings"]

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


class ServiceSettings(ServingSettings):
    model: str = Field(
        "resnet18",
        description="torchvision model name, timm/NAME (timm models), efficientnet_lite0 (real ImageNet weights, "
        "offline), or 'package.module:factory'.",
    )
    weights: str = Field(
        "DEFAULT",
        description="DEFAULT (pretrained; random with a loud warning when offline), none (random, seed 0), "
        "or a state_dict file.",
    )
    input_size: int | None = Field(
        None, ge=8, le=4096, description="Model input (center-crop) size in pixels (default: the model's own)."
    )
    resize_size: int | None = Field(
        None, ge=8, le=8192, description="Resize the shorter side to this before the crop (default: the model's own)."
    )
    interpolation: str | None = Field(None, description="Resize interpolation: nearest, bilinear or bicubic.")
    mean: str | None = Field(None, description="Per-channel mean, 3 comma-separated numbers in the pixel scale.")
    std: str | None = Field(None, description="Per-channel std, 3 comma-separated positive numbers.")
    pixel_scale: float | None = Field(
        None, description="Pixel range before normalization: 1 (pixels in 0-1) or 255 (0-255)."
    )
    labels_file: Path | None = Field(None, description="Class names, one per line in class-index order.")
    leaf_modules: str | None = Field(
        None, description="Tracer: module classes kept whole, comma-separated 'package.module:Class'."
    )
    autowrap_functions: str | None = Field(
        None, description="Tracer: functions recorded as one call, comma-separated 'package.module:function'."
    )
    autowrap_modules: str | None = Field(
        None, description="Tracer: Python modules whose functions are all autowrapped, comma-separated."
    )
    concrete_args: str | None = Field(
        None, description='Tracer: forward() arguments bound to constants, a JSON object ({"mask": null}).'
    )
    device: str = Field("cpu", description="cpu, cuda or cuda:N.")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's choice).")
    opentelemetry: bool = Field(
        False,
        description="FastAPI's native OpenTelemetry (traces, metrics and logs through the global providers); "
        "off by default: the service has its own Prometheus metrics, and the check costs every request.",
    )
    max_batch_size: int = Field(
        32, ge=1, le=MAX_BATCH_SIZE_LIMIT, description="Most images in one request or model run."
    )
    token: SecretStr | None = Field(
        None, description="Shared bearer token: the cloud requires it on /v1/*, the edge sends it. Never logged."
    )
    token_file: Path | None = Field(None, description="A file holding the token (instead of TOKEN).")
    engine: Literal["torch", "onnxruntime", "openvino"] = Field(
        "torch",
        description="What runs this side's half: torch, or onnxruntime / openvino (from ONNX_DIR's verified export "
        "of the cut, else exported when the cut is first built; onnxruntime puts the CUDA execution provider first "
        "on a cuda DEVICE where available; openvino runs on the CPU only).",
    )
    onnx_dir: Path | None = Field(
        None, description="Folder written by `splitinfer export` (engines onnxruntime, openvino)."
    )
    onnx_threads: int = Field(
        1,
        ge=1,
        description="Threads of each ONNX Runtime session (intra-op) or OpenVINO compiled model (engines "
        "onnxruntime, openvino).",
    )
    fold_bn: bool = Field(
        False,
        description="Engine torch: fold each BatchNorm into the convolution before it in this side's halves (a copy "
        "per cut; faster, logits within 1e-4 of the unfolded model but not bit-exact).",
    )
    openvino_precision: Literal["f32", "bf16"] = Field(
        "f32",
        description="Engine openvino's inference precision: f32 (within 1e-4 of torch) or bf16 (faster on CPUs with "
        "bfloat16 instructions, refused elsewhere; not exact: see docs/benchmarks.md).",
    )
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

    @field_validator("weights")
    @classmethod
    def _weights_exist(cls, value: str) -> str:
        if value.upper() == "DEFAULT" or value.lower() == "none":
            return value
        if not Path(value).is_file():
            raise ValueError(f"weights file {value!r} does not exist (use DEFAULT, none or a state_dict path)")
        return value

    @model_validator(mode="after")
    def _secrets(self) -> ServiceSettings:
        if self.token is not None and self.token_file is not None:
            raise ValueError("give TOKEN or TOKEN_FILE, not both")
        if self.token_file is not None and not self.token_file.is_file():
            raise ValueError(f"token file {str(self.token_file)!r} does not exist")
        return self

    @field_validator("interpolation")
    @classmethod
    def _known_interpolation(cls, value: str | None) -> str | None:
        if value is not None and value.lower() not in ("nearest", "bilinear", "bicubic"):
            raise ValueError(f"interpolation {value!r} is not nearest, bilinear or bicubic")
        return value.lower() if value is not None else None

    @field_validator("mean", "std")
    @classmethod
    def _three_numbers(cls, value: str | None) -> str | None:
        if value is not None:
            _floats(value)
        return value

    @field_validator("pixel_scale")
    @classmethod
    def _pixel_scale(cls, value: float | None) -> float | None:
        if value is not None and value not in (1.0, 255.0):
            raise ValueError(f"pixel scale {value} is neither 1 nor 255")
        return value

    @field_validator("labels_file")
    @classmethod
    def _labels_exist(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"labels file {str(value)!r} does not exist")
        return value

    @field_validator("concrete_args")
    @classmethod
    def _json_object(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"concrete_args is not JSON: {exc}") from exc
            if not isinstance(parsed, dict):
                raise ValueError("concrete_args must be a JSON object of argument names to values")
        return value

    def model_options(self) -> ModelOptions:
        """Preprocessing overrides, labels file and tracer options, for :func:`shared.models.load_model`."""
        from shared.models import ModelOptions, resolve_factory
        from shared.tracing import TraceOptions

        def objects(spec: str | None) -> tuple[Any, ...]:
            return tuple(resolve_factory(name.strip()) for name in (spec or "").split(",") if name.strip())

        def modules(spec: str | None) -> tuple[Any, ...]:
            names = [name.strip() for name in (spec or "").split(",") if name.strip()]
            try:
                return tuple(importlib.import_module(name) for name in names)
            except ImportError as exc:
                raise ValueError(f"cannot import autowrap module: {exc}") from exc

        preprocessing: dict[str, Any] = {
            "crop_size": self.input_size,
            "resize_size": self.resize_size,
            "interpolation": self.interpolation,
            "mean": _floats(self.mean) if self.mean else None,
            "std": _floats(self.std) if self.std else None,
            "pixel_scale": self.pixel_scale,
        }
        trace = TraceOptions(
            leaf_modules=objects(self.leaf_modules),
            autowrap_functions=objects(self.autowrap_functions),
            autowrap_modules=modules(self.autowrap_modules),
            concrete_args=json.loads(self.concrete_args) if self.concrete_args else {},
        )
        return ModelOptions(preprocessing=preprocessing, labels_file=self.labels_file, trace=trace)

    def torch_threads(self) -> TorchThreads:
        """The intra-op thread count to apply in every thread that runs torch (see service_core.torch_threads)."""
        return TorchThreads(self.threads)

    def load_model(self) -> LoadedModel:
        """Set torch's intra-op threads and load the model with its weights (random, with a loud error, when
        DEFAULT weights cannot be obtained), its preprocessing, labels and tracer options."""
        from shared.models import load_model

        self.torch_threads().apply()
        return load_model(self.model, self.weights, fallback_to_random=True, options=self.model_options())

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


def _floats(value: str) -> tuple[float, float, float]:
    try:
        numbers = tuple(float(v) for v in value.split(","))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not 3 comma-separated numbers") from exc
    if len(numbers) != 3:
        raise ValueError(f"{value!r} is not 3 comma-separated numbers")
    return (numbers[0], numbers[1], numbers[2])
