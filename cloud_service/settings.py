"""Cloud service settings (``SPLITINFER_`` environment variables or ``splitinfer cloud`` flags)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from service_core.settings import ServiceSettings

__all__ = ["CloudSettings"]


class CloudSettings(ServiceSettings):
    port: int = Field(8001, ge=0, le=65535, description="Port to listen on.")
    keep_alive_s: float = Field(
        65.0,
        gt=0,
        le=3600,
        description="Seconds an idle kept-alive connection stays open: longer than edges keep theirs (30 s), so "
        "an edge closes its idle connections first and never sends on one the cloud is closing.",
    )
    max_delay_ms: float = Field(2.0, ge=0, le=1000, description="Longest a request waits for others to join its batch.")
    max_queue: int = Field(512, ge=1, description="Requests waiting for the model before 503 + Retry-After.")
    max_payload_mib_per_image: int = Field(
        4, ge=1, description="Payload size limit per image in the batch (the total limit scales with it)."
    )
    max_decoded_bytes_in_flight: int = Field(
        2 * 1024**3,
        ge=1,
        description="Memory that request payloads may take once decoded, together: each reserves the float32 "
        "bytes its header declares (activations, or a crop per image) times its decoding working set (2-8) until "
        "it is answered (a few KiB of int2+ans, or 32 tiny JPEGs, decode to a whole batch); beyond it new requests "
        "get 503 + Retry-After before decoding. A request alone is always admitted.",
    )
    max_image_pixels: int = Field(40_000_000, ge=1, description="Pixel limit of images shipped at cut 'input'.")
    tail_cache_size: int = Field(32, ge=1, description="Built tails kept (one per cut requested).")
    channels_last: bool = Field(False, description="Run 4-D activations and the model in channels_last layout.")
    autocast: Literal["none", "bf16"] = Field(
        "none", description="Run the tail under bf16 autocast (faster on GPUs; changes results slightly)."
    )
    compile: bool = Field(False, description="torch.compile each tail (slow first request per cut).")
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Processes serving the port (SO_REUSEPORT), each with its own model; threads default to "
        "cores / workers.",
    )
    worker_load_timeout_s: float = Field(
        600.0,
        gt=0,
        le=86_400,
        description="With workers > 1: seconds a worker may take to load its model and become ready; past it the "
        "worker is killed (SIGTERM, then SIGKILL), which stops the cloud while no worker has been ready and is "
        "replaced like any dead worker once one has.",
    )
