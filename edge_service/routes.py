"""The edge's HTTP routes."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any, Literal

import torch
from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from edge_service.cloud_client import sanitize
from edge_service.demo import demo_router
from edge_service.route_policy import RouteChoice
from edge_service.runtime import Prepared
from edge_service.schemas import BatchClassifyResponse, ClassifyResponse, EdgeInfo, ImageResult, Prediction
from edge_service.state import EdgeState, EdgeStateDep
from service_core.app import ServiceRoutes
from service_core.decode_budget import Reservation
from service_core.http import media_type, versions
from service_core.image_cost import images_cost
from service_core.openapi import problem_responses
from shared.errors import (
    BadGateway,
    CloudTimeout,
    CloudUnavailable,
    EdgeOverloaded,
    ModelFailure,
    PayloadTooLarge,
    ServiceUnavailable,
    SplitInferError,
    UnprocessableContent,
    UnsupportedMediaType,
)
from shared.images import UndecodableImage
from shared.tail_timings import TailTimings, format_server_timing
from shared.tensor_checks import all_finite
from shared.wire import PROTOCOL_VERSION, WireLimits

__all__ = ["CLASSIFY_PATHS", "ROUTES", "readiness", "router"]

logger = logging.getLogger(__name__)

router = APIRouter()
v1 = APIRouter(prefix="/v1", tags=["inference"])
CLASSIFY_PATHS = ("/v1/classify", "/v1/classify/batch")
_MAX_FIELD_BYTES = 64 * 1024

_IMAGE_BODY = {
    "multipart/form-data": {
        "schema": {
            "type": "object",
            "properties": {"image": {"type": "string", "format": "binary"}},
            "required": ["image"],
        }
    },
    "image/*": {"schema": {"type": "string", "format": "binary"}},
}
_BATCH_BODY = {
    "multipart/form-data": {
        "schema": {
            "type": "object",
            "properties": {"images": {"type": "array", "items": {"type": "string", "format": "binary"}}},
            "required": ["images"],
        }
    }
}
_RECOVERABLE = (CloudUnavailable, CloudTimeout, BadGateway)
_CLASSIFY_PROBLEMS = problem_responses(408, 413, 415, 422, 500, 502, 503, 504)
_INLINE_LOGITS_BYTES = 64 * 1024  # a reply's logits (its size bounded by the classes and the batch)


TopK = Annotated[int, Query(ge=1, le=1000, description="How many classes to return per image.")]
WithLogits = Annotated[bool, Query(description="Include every logit in the response.")]
CutOverride = Annotated[
    str | None,
    Query(description="Split this request at this cut instead of the edge's current one (see /v1/info)."),
]
CodecOverride = Annotated[str | None, Query(description="Wire codec for this request (with or without `cut`).")]


class ClassifyOptions:
    """The query parameters both classify routes take."""

    def __init__(
        self, top_k: TopK = 5, logits: WithLogits = False, cut: CutOverride = None, codec: CodecOverride = None
    ) -> None:
        self.top_k, self.logits, self.cut, self.codec = top_k, logits, cut, codec


async def _classify_options(
    top_k: TopK = 5, logits: WithLogits = False, cut: CutOverride = None, codec: CodecOverride = None
) -> ClassifyOptions:
    """The options from the query (async: FastAPI would build a class dependency in a worker thread)."""
    return ClassifyOptions(top_k, logits, cut, codec)


OptionsDep = Annotated[ClassifyOptions, Depends(_classify_options)]


def _pinned_route(state: EdgeState, cut: str | None, codec: str | None) -> RouteChoice | None:
    """The route the request asks for (checked before its body is read), or None: the policy's choice."""
    if cut is None and codec is None:
        return None
    try:
        resolved = state.model.graph.cut(cut or state.routes.route.cut.name).name
        return RouteChoice(state.model.route_for(resolved, state.settings.resolved_codec(resolved, codec)), "pinned")
    except ValueError as exc:
        raise UnprocessableContent(str(exc)) from exc


def _dispatch(state: EdgeState, pinned: RouteChoice | None, images: int) -> RouteChoice:
    """The route this request takes, recorded with the policy in the same step (no await in between, so
    two requests are never both sent to one exploration). A batch never explores: it would cost every
    image and teach nothing (the policy learns from single images)."""
    choice = pinned or state.routes.choose()
    if choice.purpose == "explore" and images > 1:
        choice = RouteChoice(state.routes.route)
    state.routes.dispatched(choice)
    return choice


async def _read_images(
    request: Request, state: EdgeState, fields: tuple[str, ...]
) -> tuple[list[bytes], list[str | None]]:
    """The uploaded images and their file names (the body is bounded by the body limit of CLASSIFY_PATHS,
    see edge_service.app)."""
    kind = media_type(request)
    if kind.startswith("image/"):
        return [await request.body()], [None]
    if kind != "multipart/form-data":
        raise UnsupportedMediaType(
            f"send the image as multipart field {fields[0]!r} or as a raw body with an image/* content type, "
            f"not {kind or 'no content type'!r}"
        )
    limit = state.settings.max_batch_size
    try:
        form = await request.form(max_files=limit + 1, max_fields=limit + 8, max_part_size=_MAX_FIELD_BYTES)
    except SplitInferError:
        raise  # the body limit
    except StarletteHTTPException as exc:  # starlette's own limits and malformed bodies
        if "Too many files" in str(exc.detail):
            raise PayloadTooLarge(f"more than {limit} images; the batch limit is {limit}") from exc
        raise UnprocessableContent(f"the multipart body cannot be parsed: {exc.detail}") from exc
    except MultiPartException as exc:
        raise UnprocessableContent(f"the multipart body cannot be parsed: {exc.message}") from exc
    try:
        uploads = [item for name in fields for item in form.getlist(name) if isinstance(item, UploadFile)]
        if not uploads:
            sent = sorted(set(form.keys()))
            raise UnprocessableContent(
                f"no file in multipart field {' or '.join(repr(f) for f in fields)}; fields sent: {sent}"
            )
        if len(uploads) > limit:
            raise PayloadTooLarge(f"{len(uploads)} images exceed the batch limit of {limit}")
        return [await upload.read() for upload in uploads], [upload.filename for upload in uploads]
    finally:
        await form.close()


def _max_reply_bytes(num_classes: int, images: int) -> int:
    """The most a logits reply for ``images`` images can be: its header and ``float32[images, classes]``."""
    return 8 + WireLimits().max_header_bytes + 4 * num_classes * images


def _results(logits: torch.Tensor, state: EdgeState, top_k: int, with_logits: bool) -> list[ImageResult]:
    probabilities = torch.softmax(logits, dim=1)
    k = min(top_k, logits.shape[1])
    values, indices = probabilities.topk(k, dim=1)
    results = []
    for row in range(logits.shape[0]):
        predictions = [
            Prediction(index=int(i), label=state.model.loaded.label(int(i)), probability=float(p))
            for p, i in zip(values[row], indices[row], strict=True)
        ]
        results.append(ImageResult(predictions=predictions, logits=logits[row].tolist() if with_logits else None))
    return results


async def _classify(
    request: Request, state: EdgeState, blobs: list[bytes], pinned: RouteChoice | None, names: list[str | None]
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Classify admitted images (admission, MAX_CONCURRENT_REQUESTS included, happens before the body is
    read: service_core.admission, configured in edge_service.app). What the images decode to is reserved
    from their headers (service_core.image_cost) until the head has run, or, at cut ``input``, whose
    fallback needs the images, until the request is answered."""
    model = state.model
    cost = images_cost(blobs, model.image_limits, model.loaded.preprocessor.resize_size)
    state.in_flight += 1
    try:
        with state.decode_budget.reserve(cost) as release_decoded:
            choice = _dispatch(state, pinned, len(blobs))
            return await _classify_admitted(request, state, blobs, choice, names, release_decoded)
    finally:
        state.in_flight -= 1
        # NOTE: the request's decoded images are freed by now (they lived in _classify_admitted's frame).
        state.heap.released(getattr(request.state, "decoded_pixels", 0))


async def _classify_admitted(
    request: Request,
    state: EdgeState,
    blobs: list[bytes],
    choice: RouteChoice,
    names: list[str | None],
    release_decoded: Reservation,
) -> tuple[torch.Tensor, dict[str, Any]]:
    settings, model = state.settings, state.model
    route = choice.route
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    deadline = started + settings.request_timeout_s
    preparing = state.executor.submit(model.prepare, blobs, route, names)
    try:
        try:
            async with asyncio.timeout(settings.request_timeout_s):
                prepared: Prepared = await asyncio.wrap_future(preparing)
        finally:
            # NOTE: past the deadline, or with the client gone, the thread still decodes: its images stay
            # reserved until it ends, or the budget would admit more than it bounds
            if not preparing.done():
                release_decoded.hold_until_done(preparing)
    except UndecodableImage as exc:
        # NOTE: an image that failed partway allocated its buffer (freed by now): trimmed as a decoded one.
        request.state.decoded_pixels = exc.decoded_pixels
        raise
    except TimeoutError as exc:
        # NOTE: the edge's own compute, not the cloud: a busy edge (503, retry), not a CloudTimeout.
        raise EdgeOverloaded(
            f"the edge could not finish its part within {settings.request_timeout_s} s", retry_after=1
        ) from exc
    request.state.decoded_pixels = prepared.decoded_pixels
    if not prepared.images:  # NOTE: freed after the head (kept at cut input, for the fallback)
        release_decoded()
    timings = prepared.timings_ms
    state.metrics.compute.labels("head").observe(timings.get("head", 0.0) / 1000)
    completed_on: Literal["cloud", "edge"] = "cloud"
    cloud_instance = None
    cloud_timings = TailTimings()
    if route.runs_everything:
        logits = await loop.run_in_executor(state.executor, model.finish_locally, prepared)
        completed_on = "edge"
    else:
        state.metrics.payload_bytes.labels("sent").observe(len(prepared.payload))
        try:
            reply = await state.cloud.run_tail(
                prepared.payload,
                request_id=request.state.request_id,
                deadline_s=max(0.001, deadline - time.perf_counter()),
                max_reply_bytes=_max_reply_bytes(model.num_classes, len(blobs)),
            )
            timings["cloud_round_trip"] = reply.round_trip_ms
            cloud_instance, cloud_timings = reply.served_by, reply.timings
            state.routes.observe_link(len(prepared.payload), reply.round_trip_ms, reply.timings)
            if reply.timings.tail_ms is not None:
                timings["cloud_tail"] = reply.timings.tail_ms
            if len(reply.body) <= _INLINE_LOGITS_BYTES:  # NOTE: decoding is cheaper than a thread hop
                logits = model.decode_logits(reply.body, len(blobs), route.cut.name)
            else:
                logits = await run_in_threadpool(
                    state.threads.wrap(model.decode_logits), reply.body, len(blobs), route.cut.name
                )
        except _RECOVERABLE as exc:
            # NOTE: a probe or an exploration is the edge's own choice, made to learn (cut auto): a cloud that
            # fails it must not fail the request, which the current route (cut output, say) may never have
            # sent to the cloud at all. It is finished on the edge whatever FALLBACK says.
            learning = choice.purpose in ("probe", "explore")
            if settings.fallback != "local" and not learning:
                raise
            logger.warning(
                "cloud failed (%s: %s)%s; finishing on the edge",
                type(exc).__name__,
                exc.detail,
                f" on a request routed to {choice.purpose} cut {route.cut.name!r}" if learning else "",
            )
            logits = await loop.run_in_executor(state.executor, model.finish_locally, prepared)
            completed_on = "edge"
    if completed_on == "edge" and not all_finite(logits):
        # NOTE: the edge's own head and tail on a decoded image: a non-finite result is ours.
        raise ModelFailure(f"the model's logits at cut {route.cut.name!r} are not finite")
    timings["total"] = (time.perf_counter() - started) * 1000
    # NOTE: the policy learns only from requests that are like the ones it plans for: one image, the
    # route's split already built, finished where the route says (not by the fallback), on a route it chose
    # (a pinned request's route and images are its client's: learning from them let one client steer all).
    intended = completed_on == ("edge" if route.runs_everything else "cloud")
    if intended and len(blobs) == 1 and "build" not in timings and choice.purpose != "pinned":
        state.routes.observe_request(route, timings, cloud_timings)
    state.routes.replan()
    request.state.log_fields = {
        "cut": route.cut.name,
        "codec": route.codec,
        "bytes": len(prepared.payload),
        "images": len(blobs),
        "completed_on": completed_on,
        **{f"{k}_ms": f"{v:.1f}" for k, v in timings.items()},
    }
    common = {
        "model": model.loaded.name,
        "weights": model.loaded.weights_kind,
        "weights_digest": model.loaded.digest,
        "cut": route.cut.name,
        "codec": "none" if route.runs_everything else route.codec,  # cut 'output' ships nothing
        "payload_bytes": len(prepared.payload),
        "completed_on": completed_on,
        "cloud_instance": cloud_instance if completed_on == "cloud" else None,
        "timings_ms": {k: round(v, 3) for k, v in timings.items()},
    }
    return logits, common


@v1.post(
    "/classify",
    response_model=ClassifyResponse,
    response_model_exclude_none=True,
    responses=_CLASSIFY_PROBLEMS,
    openapi_extra={"requestBody": {"required": True, "content": _IMAGE_BODY}},
)
async def classify(request: Request, response: Response, state: EdgeStateDep, options: OptionsDep) -> ClassifyResponse:
    """Classify one image (multipart field `image`, or a raw `image/*` body)."""
    pinned = _pinned_route(state, options.cut, options.codec)
    blobs, names = await _read_images(request, state, ("image",))
    if len(blobs) != 1:
        raise UnprocessableContent(f"send exactly one image here ({len(blobs)} sent); use /v1/classify/batch")
    output, common = await _classify(request, state, blobs, pinned, names)
    response.headers["Server-Timing"] = format_server_timing(common["timings_ms"])
    result = _results(output, state, options.top_k, options.logits)[0]
    return ClassifyResponse(**common, predictions=result.predictions, logits=result.logits)


@v1.post(
    "/classify/batch",
    response_model=BatchClassifyResponse,
    response_model_exclude_none=True,
    responses=_CLASSIFY_PROBLEMS,
    openapi_extra={"requestBody": {"required": True, "content": _BATCH_BODY}},
)
async def classify_batch(
    request: Request, response: Response, state: EdgeStateDep, options: OptionsDep
) -> BatchClassifyResponse:
    """Classify several images (multipart fields `images`) as one batch: one head run, one cloud call."""
    pinned = _pinned_route(state, options.cut, options.codec)
    blobs, names = await _read_images(request, state, ("images", "image"))
    output, common = await _classify(request, state, blobs, pinned, names)
    response.headers["Server-Timing"] = format_server_timing(common["timings_ms"])
    return BatchClassifyResponse(**common, results=_results(output, state, options.top_k, options.logits))


@v1.get("/info", response_model=EdgeInfo, responses=problem_responses(503))
async def info(state: EdgeStateDep) -> dict[str, Any]:
    """What this edge serves: model, weights, cut, codec, cloud and versions."""
    model, settings = state.model, state.settings
    return {
        "service": "edge",
        "model": model.loaded.name,
        "weights": model.loaded.weights_kind,
        "weights_digest": model.loaded.digest,
        "device": settings.device,
        "cut": state.routes.route.cut.to_json(),
        "cut_selection": state.routes.to_json(),
        "codec": state.routes.route.codec or "none",
        "cloud_url": settings.cloud_url,
        "fallback": settings.fallback,
        "circuit_breaker": state.cloud.breaker.state,
        "in_flight": state.in_flight,
        "weights_source": model.loaded.weights_source,
        "preprocessing": model.loaded.preprocessor.to_json(),
        "tracing": model.loaded.trace_options.to_json(),
        "labels": len(model.loaded.labels),
        "cuts": len(model.graph.cuts),
        "cuts_digest": model.cuts_digest,
        "versions": versions(),
    }


async def readiness(request: Request, state: EdgeState) -> dict[str, Any]:
    """The model is loaded, the breaker lets requests through, and the cloud is reachable and serves the
    same model and weights (with fallback ``local``: ready whatever the cloud does)."""
    loaded = state.model.loaded
    if state.routes.route.runs_everything:
        return {"status": "ready", "cloud": "not needed (cut 'output')"}
    breaker = state.cloud.breaker
    local = state.settings.fallback == "local"
    if breaker.state == "open" and not local:
        raise ServiceUnavailable(
            f"the circuit breaker is open (the cloud failed); next probe in {breaker.retry_in_s:.1f} s",
            retry_after=max(1.0, breaker.retry_in_s),
        )
    try:
        cloud = await state.cloud.info()
    except SplitInferError as exc:
        if local:
            return {
                "status": "ready",
                "cloud": f"unreachable, falling back to local: {exc.detail}",
                "circuit_breaker": breaker.state,
            }
        raise ServiceUnavailable(f"cloud not ready: {exc.detail}") from exc
    mismatch = _cloud_mismatch(state, cloud)
    if mismatch is not None and local:
        return {
            "status": "ready",
            "cloud": f"{mismatch}; falling back to local",
            "circuit_breaker": breaker.state,
        }
    if mismatch is not None:
        raise ServiceUnavailable(mismatch)
    return {
        "status": "ready",
        "cloud": "ok",
        "circuit_breaker": breaker.state,
        "model": loaded.name,
        "weights_digest": loaded.digest,
    }


def _cloud_mismatch(state: EdgeState, cloud: dict[str, Any]) -> str | None:
    """What the cloud's ``/v1/info`` says it serves that this edge does not (None: the same model)."""
    loaded = state.model.loaded
    if cloud.get("model") != loaded.name or cloud.get("weights_digest") != loaded.digest:
        return (
            f"model mismatch: the cloud serves {sanitize(str(cloud.get('model')), 100)!r} with weights "
            f"{sanitize(str(cloud.get('weights_digest')), 100)!r}; this edge has {loaded.name!r} with weights "
            f"{loaded.digest!r}"
        )
    versions = cloud.get("versions")
    theirs = {**cloud, "protocol": versions.get("protocol") if isinstance(versions, dict) else None}
    mine = {
        "preprocessing": loaded.preprocessor.to_json(),
        "tracing": loaded.trace_options.to_json(),
        "cuts_digest": state.model.cuts_digest,
        # NOTE: another wire protocol refuses every payload (415), which the breaker does not count as failures
        "protocol": PROTOCOL_VERSION,
    }
    for key, value in mine.items():
        if theirs.get(key) != value:
            hint = (
                "run the same version of split-inference on both"
                if key == "protocol"
                else "give both services the same model settings"
            )
            return (
                f"{key} mismatch: the cloud has {sanitize(str(theirs.get(key)), 300)}; this edge has {value!r} ({hint})"
            )
    return None


router.include_router(v1)
router.include_router(demo_router)

ROUTES = ServiceRoutes(
    "split-inference edge",
    "Classifies images: runs the head of a split model here and the tail in the cloud.",
    router,
    readiness,
)
