"""Edge service settings (``SPLITINFER_`` environment variables or ``splitinfer edge`` flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from service_core.serving import check_ca_bundle, check_cloud_url
from service_core.settings import ServiceSettings
from shared.codecs import ACTIVATION_CODECS, IMAGE_CODECS, parse_codec_name
from shared.cores import available_cores
from shared.errors import UnsupportedMediaType
from shared.units import parse_bandwidth, parse_duration

__all__ = ["EdgeSettings"]


class EdgeSettings(ServiceSettings):
    cut: str = Field(
        "default",
        description="Where to split: default (the single-tensor cut nearest half the model's FLOPs), a cut name "
        "or index (see `splitinfer cuts`), input, output, or auto (chosen by "
        "the planner from EDGE_PROFILE and CLOUD_PROFILE, first for LINK_BANDWIDTH and LINK_RTT, then for "
        "the link measured on real requests).",
    )
    edge_profile: Path | None = Field(None, description="`splitinfer profile` output of this edge (cut auto).")
    cloud_profile: Path | None = Field(None, description="`splitinfer profile` output of the cloud (cut auto).")
    link_bandwidth: float = Field(
        20e6,
        gt=0,
        description="Uplink rate the planner assumes (cut auto), with its unit: 20mbit, 1gbit/s, 2.5MBps "
        "(kept in bits per second).",
    )
    link_rtt: float = Field(
        0.03, ge=0, description="Round-trip time the planner assumes (cut auto), with its unit: 30ms, 0.03s."
    )
    max_logit_error: float = Field(0.01, ge=0, description="Relative L2 bound for lossy codecs (cut auto).")
    replan_interval_s: float = Field(
        2.0, ge=0, description="Cut auto: re-plan this often from the link measured on real requests (0: never)."
    )
    switch_margin: float = Field(
        0.05, ge=0, lt=1, description="Cut auto: switch only to a cut expected this much faster (0.05 = 5%)."
    )
    switch_sigmas: float = Field(
        2.0,
        ge=0,
        description="Cut auto: switch only when the measured advantage is also this many standard errors of "
        "the difference (request latencies vary; a few lucky requests should not move the cut).",
    )
    explore_margin: float = Field(
        0.15,
        ge=0,
        lt=1,
        description="Cut auto: measure, with a few requests, the cuts expected within this much of the best "
        "that have not been measured lately, so that near-ties are decided by measurement (0: predictions only).",
    )
    explore_budget: float = Field(
        0.02,
        ge=0,
        lt=1,
        description="Cut auto: spend at most this fraction of the latency served on exploring routes expected "
        "to be slower (0.02 = 2%; a route expected no slower is explored every other request; 0: only those "
        "are explored, and a slower one is never measured).",
    )
    measurement_ttl_s: float = Field(
        60.0, gt=0, description="Cut auto: how long a cut's measured latency is trusted before it is measured again."
    )
    min_dwell_s: float = Field(5.0, ge=0, description="Cut auto: keep a cut at least this long before switching.")
    probe_interval_s: float = Field(
        10.0,
        ge=0,
        description="Cut auto: when the current cut cannot measure the link, route one request per interval "
        "through the best cut that can (0: never).",
    )
    calibrate_profiles: bool = Field(
        True, description="Cut auto: correct each side's profiled compute by what real requests measure."
    )
    codec: str | None = Field(
        None,
        description="Wire codec: fp32, fp16, bf16, int8 (each optionally +zstd), int2..int6, intB-topP "
        "(each optionally +zstd or +ans), budgetN+ans, dctN+ans; for cut 'input': image, png, jpeg or uint8. "
        "Default: fp16, or image for cut 'input'.",
    )
    cloud_url: str = Field("http://127.0.0.1:8001", description="Base URL of the cloud service.")
    connect_timeout_s: float = Field(2.0, gt=0, description="Connect timeout of calls to the cloud.")
    read_timeout_s: float = Field(15.0, gt=0, description="Read timeout of calls to the cloud.")
    request_timeout_s: float = Field(30.0, gt=0, description="Deadline of a whole classify request.")
    fallback: Literal["none", "local"] = Field(
        "none", description="When the cloud fails: none (503/504) or local (the edge runs the tail itself)."
    )
    ca_bundle: str | None = Field(None, description="CA bundle (PEM) to verify an HTTPS cloud with.")
    max_concurrent_requests: int = Field(
        64, ge=1, description="Classify requests in progress before new ones get 503 + Retry-After."
    )
    connect_retries: int = Field(2, ge=0, le=10, description="Retries (with jitter) when the cloud refuses to connect.")
    breaker_failures: int = Field(5, ge=1, description="Consecutive cloud failures that open the circuit breaker.")
    breaker_reset_s: float = Field(5.0, ge=0, description="Seconds the breaker stays open before one probe.")
    max_body_bytes_in_flight: int = Field(
        128 * 1024 * 1024,
        ge=1,
        description="Upload bytes the edge admits at once (Content-Length, or MAX_UPLOAD_BYTES when none is "
        "declared); beyond it new requests get 503 + Retry-After before their body is read.",
    )
    max_decoded_bytes_in_flight: int = Field(
        1024**3,
        ge=1,
        description="Memory that the images of requests in progress may take once decoded, together: each "
        "request reserves its images' decoded pixels (from their headers, a large JPEG at its reduced scale) "
        "times 4 bytes, and what converting the largest to RGB holds beside them (4 bytes a pixel, 2 for "
        "greyscale or palette images), until it is answered (a few-KB PNG can declare 40 megapixels); beyond it "
        "new requests get 503 + Retry-After before decoding. A request alone is always admitted.",
    )
    head_workers: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Requests whose head runs at once (default: the cores over each run's intra-op threads, "
        "so one torch head on every core runs alone, one-thread ONNX Runtime or OpenVINO heads one per core).",
    )
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Largest request body accepted.")
    max_image_pixels: int = Field(40_000_000, ge=1, description="Largest image (width x height) accepted.")
    image_formats: str = Field("JPEG,PNG,WEBP", description="Accepted image formats (PIL names).")

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
    def _known_codec(cls, value: str | None) -> str | None:
        if value is not None:
            _check_codec_name(value)
        return value

    @model_validator(mode="after")
    def _auto_needs_profiles(self) -> EdgeSettings:
        if self.cut != "auto":
            return self
        for name, path in (("EDGE_PROFILE", self.edge_profile), ("CLOUD_PROFILE", self.cloud_profile)):
            if path is None or not path.is_file():
                given = "not given" if path is None else f"{str(path)!r} is not a file"
                raise ValueError(f"cut 'auto' needs {name}, a file written by `splitinfer profile` ({given})")
        return self

    @field_validator("link_bandwidth", mode="before")
    @classmethod
    def _rate_with_unit(cls, value: object) -> object:
        return parse_bandwidth(value) if isinstance(value, str) else value

    @field_validator("link_rtt", mode="before")
    @classmethod
    def _duration_with_unit(cls, value: object) -> object:
        return parse_duration(value) if isinstance(value, str) else value

    def resolved_head_workers(self) -> int:
        """``head_workers``, or the cores this process may use over the threads one head run takes."""
        if self.head_workers is not None:
            return self.head_workers
        cores = available_cores()
        per_run = self.onnx_threads if self.engine != "torch" else (self.threads or cores)
        return max(1, cores // per_run)

    def resolved_codec(self, cut: str, codec: str | None = None) -> str | None:
        """``codec`` (default: the configured one) for ``cut``, checked to fit (image codecs for ``input``;
        ``None`` for ``output``, which sends nothing: a codec asked for there must still be one)."""
        if cut == "output":
            if codec is not None:
                _check_codec_name(codec)
            return None
        if cut == "input":
            codec = codec or self.codec or "image"
            allowed = IMAGE_CODECS
        else:
            codec = codec or self.codec or "fp16"
            allowed = ACTIVATION_CODECS
        try:
            parse_codec_name(codec, allowed)
        except UnsupportedMediaType as exc:
            raise ValueError(f"codec {codec!r} does not fit cut {cut!r}: {exc.detail}") from exc
        return codec

    @property
    def formats(self) -> tuple[str, ...]:
        return tuple(f.strip().upper() for f in self.image_formats.split(",") if f.strip())


def _check_codec_name(codec: str) -> None:
    """``ValueError`` (saying which) unless ``codec`` names a wire codec of some cut."""
    try:
        parse_codec_name(codec, ACTIVATION_CODECS + IMAGE_CODECS)
    except UnsupportedMediaType as exc:
        raise ValueError(f"codec {codec!r} is not a codec: {exc.detail}") from exc
