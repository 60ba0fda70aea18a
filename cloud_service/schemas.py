"""The cloud's JSON response bodies (they also document the API in OpenAPI)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CloudInfo"]


class CloudInfo(BaseModel):
    """``GET /v1/info``: what this cloud serves."""

    model_config = ConfigDict(extra="allow")

    service: Literal["cloud"]
    instance: str = Field(description="host:pid of the process that answered.")
    model: str
    weights: str = Field(description="pretrained, random or file.")
    weights_digest: str
    device: str
    num_classes: int
    cuts: int = Field(description="How many cuts the model has.")
    batching: dict[str, Any] = Field(description="max_batch_size, max_delay_ms, max_queue.")
    max_payload_bytes: int
    versions: dict[str, str]
