"""The cloud's HTTP routes."""

from __future__ import annotations

import hmac
import time
from dataclasses import asdict, replace
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from cloud_service.schemas import CloudInfo
from cloud_service.state import CloudState, CloudStateDep
from service_core.app import ServiceRoutes
from service_core.http import SERVED_BY_HEADER, media_type, versions
from service_core.openapi import problem_responses
from shared.errors import Unauthorized, UnsupportedMediaType
from shared.protocol import encode_logits
from shared.tail_timings import BodyArrival, TailTimings
from shared.wire import MEDIA_TYPE

__all__ = ["ROUTES", "TAIL_PATH", "readiness", "router"]

TAIL_PATH = "/v1/tail"
router = APIRouter()
_ACCEPTED_BODIES = (MEDIA_TYPE, "application/octet-stream")


async def _authorize(request: Request) -> None:
    """With a token configured, /v1/* needs ``Authorization: Bearer <token>`` (compared in constant time)."""
    expected = getattr(request.app.state, "token", None)
    if expected is None:
        return
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.encode(), expected.encode()):
        raise Unauthorized("a valid bearer token is required (Authorization: Bearer <SPLITINFER_TOKEN>)")


v1 = APIRouter(prefix="/v1", tags=["inference"], dependencies=[Depends(_authorize)])


@v1.post(
    TAIL_PATH.removeprefix("/v1"),
    response_class=Response,
    responses={
        200: {
            "description": "Logits: a wire payload (kind 'logits'), or JSON with `Accept: application/json`.",
            "content": {MEDIA_TYPE: {}, "application/json": {}},
        },
        **problem_responses(400, 401, 409, 413, 415, 422, 503, 504),
    },
    openapi_extra={
        "requestBody": {"required": True, "content": {MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}}
    },
)
async def run_tail(request: Request, state: CloudStateDep) -> Response:
    """Run the tail for the cut a wire payload names and return the logits."""
    if media_type(request) not in _ACCEPTED_BODIES:
        raise UnsupportedMediaType(f"send the wire payload as {MEDIA_TYPE}, not {media_type(request) or 'nothing'!r}")
    # NOTE: the handler starts once the headers are in; recv is the body streaming in, and stream the
    # part of it after its first chunk (desc: its bytes), which lets the edge estimate its uplink
    # bandwidth (and, with total, the round-trip time).
    arrived = time.perf_counter()
    arrival = BodyArrival()
    chunks = []
    async for chunk in request.stream():  # NOTE: bounded by the body limit of TAIL_PATH (cloud_service.app)
        if chunk:
            arrival.add(len(chunk))
            chunks.append(chunk)
    body = b"".join(chunks)
    state.metrics.payload_bytes.labels("received").observe(len(body))
    started = time.perf_counter()
    if state.model.cheap_to_decode(body):  # NOTE: a thread hop costs more than decoding a small payload
        tail_input = state.model.decode(body)
    else:
        tail_input = await run_in_threadpool(state.model.decode, body)
    decode_ms = (time.perf_counter() - started) * 1000
    logits, stats = await state.batcher.submit(tail_input.cut, tail_input.tensors, tail_input.batch_size)
    state.metrics.compute.labels("tail").observe(stats.compute_ms / 1000)
    timings = TailTimings(
        recv_ms=(started - arrived) * 1000,
        stream_ms=arrival.streamed_ms,
        stream_bytes=arrival.streamed_bytes,
        decode_ms=decode_ms,
        queue_ms=stats.queue_ms,
        tail_ms=stats.compute_ms,
    )
    request.state.log_fields = {"cut": tail_input.cut, "bytes": len(body), "batch": stats.batch_size}
    loaded = state.model.loaded
    if "application/json" in request.headers.get("accept", ""):
        content: dict[str, Any] = {
            "model": loaded.name,
            "weights_digest": loaded.digest,
            "cut": tail_input.cut,
            "logits": logits.tolist(),
            "batch_size": stats.batch_size,
            "timings_ms": {k: round(v, 3) for k, v in asdict(timings).items() if k.endswith("_ms") and v is not None},
        }
        headers = _tail_headers(timings, arrived, stats.batch_size, state.instance)
        return JSONResponse(content, headers=headers)
    data = encode_logits(logits, model=loaded.name, weights=loaded.digest, cut=tail_input.cut)
    headers = _tail_headers(timings, arrived, stats.batch_size, state.instance)
    return Response(data, media_type=MEDIA_TYPE, headers=headers)


def _tail_headers(timings: TailTimings, arrived: float, batch_size: int, instance: str) -> dict[str, str]:
    total = replace(timings, total_ms=(time.perf_counter() - arrived) * 1000)
    return {"Server-Timing": total.format(), "X-Batch-Size": str(batch_size), SERVED_BY_HEADER: instance}


@v1.get("/info", response_model=CloudInfo, responses=problem_responses(401, 503))
async def info(state: CloudStateDep) -> dict[str, Any]:
    """What this cloud serves: model, weights digest, device, limits and versions."""
    loaded = state.model.loaded
    settings = state.settings
    return {
        "service": "cloud",
        "instance": state.instance,
        "model": loaded.name,
        "weights": loaded.weights_kind,
        "weights_digest": loaded.digest,
        "device": settings.device,
        "weights_source": loaded.weights_source,
        "num_classes": state.model.num_classes,
        "cuts": len(state.model.graph.cuts),
        "cuts_digest": state.model.cuts_digest,
        "preprocessing": loaded.preprocessor.to_json(),
        "tracing": loaded.trace_options.to_json(),
        "batching": {
            "max_batch_size": settings.max_batch_size,
            "max_delay_ms": settings.max_delay_ms,
            "max_queue": settings.max_queue,
        },
        "max_payload_bytes": state.model.wire_limits.max_payload_bytes,
        "versions": versions(),
    }


async def readiness(request: Request, state: CloudState) -> dict[str, Any]:
    """The model is loaded and the service accepts work."""
    return {"status": "ready", "model": state.model.loaded.name, "weights_digest": state.model.loaded.digest}


router.include_router(v1)

ROUTES = ServiceRoutes(
    "split-inference cloud", "Runs the tail of a split image classifier on payloads sent by edges.", router, readiness
)
