"""Settings of the torch-free edge (``SPLITINFER_`` environment variables, or ``python -m edge_lite`` flags).

How it serves HTTP (address, TLS, draining, keep-alive, the connection cap) is
:class:`service_core.serving.ServingSettings`, the torch services' own: the same fields and checks."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from service_core.serving import ServingSettings, check_ca_bundle, check_cloud_url

__all__ = ["EdgeLiteSettings"]


class EdgeLiteSettings(ServingSettings):
    onnx_dir: Path = Field(description="Folder written by `splitinfer export MODEL --cut C` (manifest, head.onnx).")
    codec: str = Field("fp16", description="Wire codec: fp32, fp16, bf16 or int8, each optionally +zstd.")
    cloud_url: str = Field("http://127.0.0.1:8001", description="Base URL of the cloud service.")
    ca_bundle: str | None = Field(None, description="CA bundle (PEM) to verify an HTTPS cloud with.")
    engine: Literal["onnxruntime", "openvino"] = Field(
        "onnxruntime", description="What runs the head: onnxruntime, or openvino (the `openvino` extra)."
    )
    onnx_threads: int = Field(1, ge=1, description="Threads of the head's ONNX Runtime session or OpenVINO model.")
    openvino_precision: Literal["f32", "bf16"] = Field(
        "f32", description="Engine openvino's precision: f32, or bf16 (CPUs with bfloat16 only; not exact)."
    )
    token: SecretStr | None = Field(None, description="Bearer token the cloud requires (never logged).")
    connect_timeout_s: float = Field(2.0, gt=0, description="Connect timeout of calls to the cloud.")
    read_timeout_s: float = Field(15.0, gt=0, description="Read timeout of calls to the cloud.")
    request_timeout_s: float = Field(
        30.0, gt=0, description="Deadline of a request's call to the cloud, however the reply trickles in (504 after)."
    )
    max_concurrent_requests: int = Field(64, ge=1, description="Requests in progress before 503 + Retry-After.")
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Largest request body accepted.")
    max_body_bytes_in_flight: int = Field(
        64 * 1024 * 1024,
        ge=1,
        description="Upload bytes the edge admits at once (Content-Length, or MAX_UPLOAD_BYTES when none is "
        "declared); beyond it new requests get 503 + Retry-After before their body is read (413 for a body "
        "declared larger than it alone). The torch edge's: 128 MiB.",
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="A request body must arrive within this many seconds (408 otherwise)."
    )
    max_image_pixels: int = Field(40_000_000, ge=1, description="Largest image (width x height) accepted.")
    image_formats: str = Field("JPEG,PNG,WEBP", description="Accepted image formats (PIL names).")
    max_decoded_bytes_in_flight: int = Field(
        256 * 1024**2,
        ge=1,
        description="Memory that the images of requests being decoded may take, together: each request reserves "
        "its image's decoded pixels (from its header, a large JPEG at its reduced scale) times 4 bytes, and 4 more "
        "(2 for a greyscale or palette image) for its conversion to RGB, until its "
        "head has run (a few-KB PNG can declare 40 megapixels); beyond it new requests get 503 + Retry-After "
        "before decoding. A request alone is always admitted. 256 MiB (the torch edge: 1 GiB) suits a device with "
        "1-2 GB: about ten 12-megapixel phone JPEGs at once, or one 40-megapixel PNG.",
    )

    @field_validator("cloud_url")
    @classmethod
    def _cloud_base_url(cls, value: str) -> str:
        return check_cloud_url(value)

    @field_validator("ca_bundle")
    @classmethod
    def _loadable_ca_bundle(cls, value: str | None) -> str | None:
        return check_ca_bundle(value)

    @field_validator("codec")
    @classmethod
    def _known_codec(cls, value: str) -> str:
        from edge_lite.wire import ACTIVATION_CODECS

        if value.removesuffix("+zstd") not in ACTIVATION_CODECS:
            raise ValueError(f"codec {value!r} is not one of {', '.join(ACTIVATION_CODECS)} (optionally +zstd)")
        return value

    @property
    def formats(self) -> tuple[str, ...]:
        return tuple(f.strip().upper() for f in self.image_formats.split(",") if f.strip())
