"""The edge's response bodies (they also document the API in OpenAPI)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["BatchClassifyResponse", "ClassifyResponse", "EdgeInfo", "ImageResult", "Prediction"]


class Prediction(BaseModel):
    index: int = Field(description="Class index.")
    label: str = Field(description="Class name from the weights' metadata.")
    probability: float = Field(description="Softmax probability.")


class ImageResult(BaseModel):
    predictions: list[Prediction] = Field(description="Top-k classes, most probable first.")
    logits: list[float] | None = Field(None, description="All logits, when asked for with `logits=true`.")


class _Common(BaseModel):
    model: str
    weights: str = Field(description="pretrained, random or file.")
    weights_digest: str
    cut: str
    codec: str = Field(description="The wire codec; none when the edge ran the whole model (cut output).")
    payload_bytes: int = Field(description="Bytes sent to the cloud (0 when the edge did everything).")
    completed_on: Literal["cloud", "edge"]
    cloud_instance: str | None = Field(None, description="The cloud instance (host:pid) that ran the tail.")
    timings_ms: dict[str, float] = Field(
        description="decode, preprocess, head, encode, cloud_round_trip, cloud_tail (as the cloud reports it), "
        "tail (when run on the edge), total."
    )


class ClassifyResponse(_Common, ImageResult):
    pass


class BatchClassifyResponse(_Common):
    results: list[ImageResult] = Field(description="One result per image, in the order sent.")


class EdgeInfo(BaseModel):
    """``GET /v1/info``: what this edge serves."""

    model_config = ConfigDict(extra="allow")

    service: Literal["edge"]
    model: str
    weights: str = Field(description="pretrained, random or file.")
    weights_digest: str
    device: str
    cut: dict[str, Any] = Field(description="The current cut: index, name, node, tensors, bytes_fp32, FLOPs share.")
    cut_selection: dict[str, Any] = Field(description="{'mode': 'fixed'}, or cut auto's plan, link and switches.")
    codec: str = Field(description="The wire codec; none when the edge runs the whole model (cut output).")
    cloud_url: str
    fallback: Literal["none", "local"]
    circuit_breaker: str = Field(description="closed, open or half-open.")
    in_flight: int = Field(description="Classify requests in progress.")
    preprocessing: dict[str, Any] = Field(description="Resize, crop, mean and std the model expects.")
    versions: dict[str, str] = Field(description="Versions of this package, torch and torchvision.")
