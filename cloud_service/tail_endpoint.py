"""``POST /v1/tail``: run the tail for the cut a wire payload names and return the logits.

A plain ASGI app (service_core.direct_routes): this is the cloud's hot path, and every request of every
edge comes through it. It reads what it needs from the raw headers in one pass, streams the body
(bounded by the body limit outside it), and answers with two ASGI messages.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from typing import Any, cast

from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from cloud_service.auth import check_bearer
from cloud_service.state import CloudState
from service_core.http import SERVED_BY_HEADER
from service_core.openapi import operation_problems
from shared.errors import ClientClosedRequest, ServiceUnavailable, UnsupportedMediaType
from shared.images import UndecodableImage
from shared.tail_timings import BodyArrival, TailTimings
from shared.wire import MEDIA_TYPE

__all__ = ["TAIL_OPERATION", "TAIL_PATH", "serve_tail"]

TAIL_PATH = "/v1/tail"
_ACCEPTED_BODIES = (MEDIA_TYPE, "application/octet-stream")
_MEDIA_TYPE_BYTES = MEDIA_TYPE.encode()
_JSON = b"application/json"
_MEDIA_TYPE_LOWER = _MEDIA_TYPE_BYTES.lower()
_SERVED_BY = SERVED_BY_HEADER.lower().encode()

TAIL_OPERATION: dict[str, Any] = {
    "tags": ["inference"],
    "summary": "Run Tail",
    "description": "Run the tail for the cut a wire payload names and return the logits.",
    "operationId": "run_tail_v1_tail_post",
    "requestBody": {"required": True, "content": {MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}},
    "responses": {
        "200": {
            "description": "Logits: a wire payload (kind 'logits'), or JSON with `Accept: application/json`.",
            "content": {MEDIA_TYPE: {}, "application/json": {}},
        },
        **operation_problems(400, 401, 408, 409, 413, 415, 422, 500, 503, 504),
    },
}
"""The OpenAPI operation of ``POST /v1/tail``."""


class _Headers:
    """The request headers the tail needs, from one pass over the raw ASGI headers: the first of each, as
    Starlette's ``Headers.get`` (the other routes' bearer check) reads them."""

    __slots__ = ("accept", "authorization", "content_type")

    def __init__(self, scope: Scope) -> None:
        content_type = authorization = accept = None
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = content_type if content_type is not None else value
            elif key == b"authorization":
                authorization = authorization if authorization is not None else value
            elif key == b"accept":
                accept = accept if accept is not None else value
        self.content_type, self.authorization, self.accept = content_type or b"", authorization or b"", accept or b""


def _wants_json(accept: bytes) -> bool:
    """Whether ``Accept`` prefers ``application/json`` to the wire payload (a tie goes to JSON, named).

    Media types compare case-insensitively and each weighs its ``q`` (1 unless given): ``application/json;q=0``
    refuses JSON, and ``application/jsonx`` is not JSON. The wire payload is weighed by its own entry, else
    ``application/*``, else ``*/*`` (0 when none names it). Anything else gets the wire payload, as before.
    """
    lowered = accept.lower()
    if _JSON not in lowered:  # NOTE: the edge's every request: no parsing
        return False
    weights: dict[bytes, float] = {}
    for item in lowered.split(b","):
        media, *params = (part.strip() for part in item.split(b";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition(b"=")
            if key.strip() == b"q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:  # NOTE: also NaN
                    q = 0.0
        weights[media] = max(q, weights.get(media, 0.0))
    json_q = weights.get(_JSON, 0.0)
    wire_q = next((weights[m] for m in (_MEDIA_TYPE_LOWER, b"application/*", b"*/*") if m in weights), 0.0)
    return json_q > 0 and json_q >= wire_q


async def _read_body(receive: Receive, arrival: BodyArrival) -> bytes:
    chunks = []
    while True:
        message = await receive()  # NOTE: bounded in size and time by the body limit outside
        if message["type"] == "http.disconnect":
            raise ClientClosedRequest("the client closed the connection before its request was read")
        chunk = message.get("body", b"")
        if chunk:
            arrival.add(len(chunk))
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def serve_tail(scope: Scope, receive: Receive, send: Send) -> None:
    """Run the tail for the cut a wire payload names and return the logits."""
    app_state = scope["app"].state
    state = cast(CloudState | None, getattr(app_state, "service", None))
    if state is None:
        raise ServiceUnavailable("the model is still loading")
    headers = _Headers(scope)
    check_bearer(getattr(app_state, "token", None), headers.authorization.decode("latin-1"))
    media_type = headers.content_type.decode("latin-1").split(";", 1)[0].strip().lower()
    if media_type not in _ACCEPTED_BODIES:
        raise UnsupportedMediaType(f"send the wire payload as {MEDIA_TYPE}, not {media_type or 'nothing'!r}")
    # NOTE: the handler starts once the headers are in; recv is the body streaming in, and stream the
    # part of it after its first chunk (desc: its bytes), which lets the edge estimate its uplink
    # bandwidth (and, with total, the round-trip time).
    arrived = time.perf_counter()
    arrival = BodyArrival()
    body = await _read_body(receive, arrival)
    state.metrics.received_bytes.observe(len(body))
    started = time.perf_counter()
    model = state.model
    header = model.read_header(body)
    # NOTE: what the payload decodes to is reserved until it is answered (a few KiB can decode to a batch)
    with state.decode_budget.reserve(model.decode_cost(body, header)):
        try:
            if model.cheap_to_decode(body, header):  # NOTE: a thread hop costs more than decoding a small payload
                tail_input = model.decode(body, header)
            else:
                tail_input = await run_in_threadpool(state.threads.wrap(model.decode), body, header)
        except UndecodableImage as exc:
            # NOTE: an image that failed partway allocated its buffer (freed by now): trimmed as a decoded one.
            state.heap.released(exc.decoded_pixels)
            raise
        decode_ms = (time.perf_counter() - started) * 1000
        if tail_input.decoded_pixels:  # NOTE: images (cut input), their decoded pictures freed by now; never tensors
            state.heap.released(tail_input.decoded_pixels)
        if not model.has_tail(tail_input.cut):
            # NOTE: a cut's first payload builds its tail here, not in the batcher, whose runs are serialized on
            # one thread: the batches of built cuts go on meanwhile (an ONNX Runtime tail takes seconds to export).
            # With one torch thread: a pool thread that ran a team of every core would keep it.
            async with state.tail_builds:
                if not model.has_tail(tail_input.cut):
                    await run_in_threadpool(state.threads.wrap(model.tail), tail_input.cut)
        logits, stats = await state.batcher.submit(tail_input.cut, tail_input.tensors, tail_input.batch_size)
    cut = tail_input.cut
    del tail_input  # NOTE: the decoded tensors go with their reservation, before a slow reader takes the reply
    state.metrics.tail_seconds.observe(stats.compute_ms / 1000)
    timings = TailTimings(
        recv_ms=(started - arrived) * 1000,
        stream_ms=arrival.streamed_ms,
        stream_bytes=arrival.streamed_bytes,
        decode_ms=decode_ms,
        queue_ms=stats.queue_ms,
        tail_ms=stats.compute_ms,
    )
    scope.setdefault("state", {})["log_fields"] = {"cut": cut, "bytes": len(body), "batch": stats.batch_size}
    loaded = model.loaded
    if _wants_json(headers.accept):
        content: dict[str, Any] = {
            "model": loaded.name,
            "weights_digest": loaded.digest,
            "cut": cut,
            "logits": logits.tolist(),
            "batch_size": stats.batch_size,
            "timings_ms": {k: round(v, 3) for k, v in asdict(timings).items() if k.endswith("_ms") and v is not None},
        }
        data = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
        content_type = _JSON
    else:
        data = model.encode_logits(logits, cut)
        content_type = _MEDIA_TYPE_BYTES
    total = replace(timings, total_ms=(time.perf_counter() - arrived) * 1000)
    response_headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(data)).encode()),
        (b"server-timing", total.format().encode("latin-1")),
        (b"x-batch-size", str(stats.batch_size).encode()),
        (_SERVED_BY, state.instance.encode("latin-1")),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": response_headers})
    await send({"type": "http.response.body", "body": data})
