"""The torch-free edge service: ``create_app(settings)``; the head session and the cloud client live in the lifespan.

Routes: ``POST /v1/classify`` (one image, multipart field ``image`` or a raw ``image/*`` body; the same
response as :mod:`edge_service`'s, less the fallback and cut selection), ``GET /v1/info``, ``/healthz``,
``/readyz`` (not draining, and the cloud serves the export's model and weights) and ``/metrics``; ``HEAD``
wherever ``GET`` is (:mod:`service_core.head_requests`). It is served by ``splitinfer.serve`` as the torch
services are (see :mod:`edge_lite.__main__`).

Memory is bounded as the torch edge bounds it: each request reserves what its image decodes to, priced from
its header before decoding (:mod:`service_core.image_cost`), in a :class:`~service_core.decode_budget.DecodeBudget`
of ``MAX_DECODED_BYTES_IN_FLIGHT`` until its head has run (the decoded image is freed then: the cloud call
holds only the payload); past it, 503 + Retry-After. After a request that decoded at least
:data:`~service_core.heap.LARGE_DECODE_PIXELS` (decoded whole or failed partway) the heap is trimmed
(:class:`~service_core.heap.HeapTrimmer`), so a burst of large photos does not leave the process large.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge_lite.preprocess import NumpyPreprocessor
from edge_lite.settings import EdgeLiteSettings
from edge_lite.wire import decode_logits, encode_activations, max_logits_reply_bytes
from service_core.admission import Admission, AdmissionMiddleware
from service_core.body_limit import BodyLimitMiddleware
from service_core.connections import connections_refused_counter
from service_core.decode_budget import DecodeBudget
from service_core.head_requests import HeadAsGetMiddleware
from service_core.heap import HeapTrimmer, malloc_trim
from service_core.image_cost import images_cost
from service_core.openapi import install_openapi
from service_core.problems import install_problem_handlers
from service_core.serving import dropped_connection_hint, tls_client_context
from shared.cores import available_cores
from shared.engines import OnnxHalf, engine_options, open_half
from shared.errors import (
    BadGateway,
    CloudModelMismatch,
    CloudTimeout,
    CloudUnavailable,
    ModelMismatch,
    PayloadTooLarge,
    ServiceUnavailable,
    SplitInferError,
    UnprocessableContent,
    UnsupportedMediaType,
)
from shared.images import ImageLimits, UndecodableImage, decode_image
from shared.onnx_manifest import Manifest
from shared.peer_text import problem_detail, sanitize

__all__ = ["EdgeLiteState", "create_app"]

logger = logging.getLogger(__name__)
MEDIA_TYPE = "application/vnd.splitinfer+safetensors"
CLASSIFY_PATH = "/v1/classify"
_MAX_INFO_BYTES = 64 * 1024
_INFO_TIMEOUT_S = 2.0


@dataclass
class EdgeLiteState:
    settings: EdgeLiteSettings
    manifest: Manifest
    head: OnnxHalf
    preprocessor: NumpyPreprocessor
    limits: ImageLimits
    client: httpx.AsyncClient
    registry: CollectorRegistry
    heap: HeapTrimmer
    decode_budget: DecodeBudget = field(init=False)
    """What the images of requests being decoded take (service_core.image_cost)."""

    def __post_init__(self) -> None:
        self.decode_budget = DecodeBudget(self.settings.max_decoded_bytes_in_flight)


@dataclass
class _HeadRun:
    """What running a request's head measured: its steps' times, and the pixels its image decoded to (also
    when the decode failed partway, or a later step failed)."""

    timings: dict[str, float] = field(default_factory=dict)
    decoded_pixels: int = 0


@dataclass(frozen=True)
class ServingMetrics:
    """What the HTTP protocol counts (``app.state.metrics``), from before the model loads."""

    connections_refused: Counter


def _load(settings: EdgeLiteSettings) -> tuple[Manifest, OnnxHalf, NumpyPreprocessor]:
    manifest = Manifest.read(settings.onnx_dir)
    manifest.verify(settings.onnx_dir, halves=("head",))
    manifest.values_at(1)  # NOTE: a value the edge could not send stops it here, not at the first request
    # NOTE: heads run in the server's thread pool, so up to one per core runs at once (OpenVINO: a stream each)
    options = engine_options(
        settings.engine,
        threads=settings.onnx_threads,
        precision=settings.openvino_precision,
        parallel_runs=max(1, available_cores() // settings.onnx_threads),
    )
    if options is None:  # NOTE: unreachable: the settings allow onnxruntime and openvino only
        raise ValueError(f"engine {settings.engine!r} cannot run an ONNX head")
    path = settings.onnx_dir / manifest.head.file
    # NOTE: a missing or unreadable file raises the OS's error, one the engine refuses UnloadableModel; each
    # is a one-line startup failure (splitinfer.failures). Anything else is a bug and keeps its traceback.
    head = open_half(path, options)
    expected = [t.name for t in manifest.cut_tensors]
    if list(head.output_names) != expected:
        raise ModelMismatch(
            f"{str(path)!r} is not the head its manifest describes: it returns {list(head.output_names)}, "
            f"the manifest's cut {manifest.cut!r} has {expected}"
        )
    preprocessor = NumpyPreprocessor.from_json(manifest.preprocessing, settings.max_image_pixels)
    return manifest, head, preprocessor


def create_app(settings: EdgeLiteSettings, *, cloud_transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """The torch-free edge. ``cloud_transport`` replaces the network under its cloud client (tests use
    ``httpx.MockTransport``)."""
    # NOTE: the metrics are the app's, made once: a lifespan that runs again must not register them twice
    registry = CollectorRegistry()
    requests = Counter("splitinfer_requests", "Classify requests by status", ["status"], registry=registry)
    latency = Histogram("splitinfer_request_seconds", "Classify latency", registry=registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        manifest, head, preprocessor = _load(settings)
        token = settings.token.get_secret_value() if settings.token is not None else None
        client = httpx.AsyncClient(
            base_url=settings.cloud_url,
            headers={"Authorization": f"Bearer {token}"} if token else {},
            timeout=httpx.Timeout(settings.read_timeout_s, connect=settings.connect_timeout_s),
            transport=cloud_transport,
            verify=tls_client_context(settings.ca_bundle) or True,
        )
        app.state.edge = EdgeLiteState(
            settings=settings,
            manifest=manifest,
            head=head,
            preprocessor=preprocessor,
            limits=ImageLimits(
                max_bytes=settings.max_upload_bytes, max_pixels=settings.max_image_pixels, formats=settings.formats
            ),
            client=client,
            registry=registry,
            heap=HeapTrimmer(malloc_trim()),
        )
        logger.info(
            "torch-free edge serving %s (weights %s) at cut %s with codec %s on %s, cloud %s",
            manifest.model,
            manifest.weights.removeprefix("sha256:")[:12],
            manifest.cut,
            settings.codec,
            ", ".join(head.providers),
            settings.cloud_url,
        )
        try:
            yield
        finally:
            await client.aclose()

    app = FastAPI(title="split-inference edge (torch-free)", lifespan=lifespan, docs_url=None, redoc_url=None)
    install_openapi(app)  # NOTE: /docs from the package's Swagger UI files (FastAPI's loads a CDN's script)
    app.router.redirect_slashes = False  # NOTE: a trailing slash is a 404 problem naming the route, not a 307
    app.state.draining = False  # NOTE: set on SIGTERM by splitinfer.serve
    app.state.metrics = ServingMetrics(connections_refused_counter(registry))
    install_problem_handlers(app)
    app.add_middleware(HeadAsGetMiddleware)
    # NOTE: as the torch edge (service_core.app): the body bounded in size and time where it enters, and a
    # request admitted (requests and upload bytes in flight) before any byte of it is read; the counter
    # outside both, so their refusals are counted too.
    limit = settings.max_upload_bytes

    def limit_for(scope: Scope) -> int | None:
        return limit if scope["path"] == CLASSIFY_PATH else None

    app.add_middleware(BodyLimitMiddleware, limit_for=limit_for, timeout_s=settings.body_timeout_s)
    admission = Admission(
        admits=lambda scope: scope["path"] == CLASSIFY_PATH,
        max_requests=settings.max_concurrent_requests,
        max_body_bytes=settings.max_body_bytes_in_flight,
    )
    app.add_middleware(AdmissionMiddleware, admission=admission, limit_for=limit_for)
    app.state.admission = admission  # NOTE: as the torch services keep theirs: what is admitted, for tests
    app.add_middleware(_CountClassify, requests=requests, latency=latency)
    app.include_router(router)
    return app


class _CountClassify:
    """``splitinfer_requests_total{status}`` and ``splitinfer_request_seconds`` of classify requests, whoever
    answers them (the route, or admission and the body limit before it)."""

    def __init__(self, app: ASGIApp, requests: Counter, latency: Histogram) -> None:
        self.app, self.requests, self.latency = app, requests, latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != CLASSIFY_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.requests.labels(str(status)).inc()
            self.latency.observe(time.perf_counter() - start)


def _state(request: Request) -> EdgeLiteState:
    state = getattr(request.app.state, "edge", None)
    if state is None:
        raise ServiceUnavailable("the model is still loading")
    return state  # type: ignore[no-any-return]


StateDep = Annotated[EdgeLiteState, Depends(_state)]
router = APIRouter()


async def _bounded_body(request: Request, limit: int) -> bytes:
    """The body (its declared length, its size and its time are bounded outside: BodyLimitMiddleware)."""
    too_large = f"the body exceeds the limit of {limit} bytes"
    return await _joined(request.stream(), limit, lambda: PayloadTooLarge(too_large))


async def _joined(chunks: AsyncIterator[bytes], limit: int, too_large: Callable[[], SplitInferError]) -> bytes:
    """``chunks`` joined, ``too_large()`` raised as soon as they pass ``limit`` bytes."""
    kept: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise too_large()
        kept.append(chunk)
    return b"".join(kept)


async def _read_image(request: Request, state: EdgeLiteState) -> bytes:
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    body = await _bounded_body(request, state.settings.max_upload_bytes)
    if kind.startswith("image/"):
        return body
    if kind != "multipart/form-data":
        raise UnsupportedMediaType(f"send the image as multipart field 'image' or a raw image/* body, not {kind!r}")
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    # NOTE: the body is read (and bounded) above; the form parser reads the same bytes again from memory.
    try:
        form = await Request(request.scope, replay).form(max_files=2, max_fields=8)
    except Exception as exc:  # starlette raises MultiPartException / HTTPException on malformed bodies
        raise UnprocessableContent(f"the multipart body cannot be parsed: {exc}") from exc
    try:
        uploads = [item for item in form.getlist("image") if isinstance(item, UploadFile)]
        if len(uploads) != 1:
            raise UnprocessableContent(f"send exactly one file in multipart field 'image' ({len(uploads)} sent)")
        return await uploads[0].read()
    finally:
        await form.close()


def _timed(run: _HeadRun, name: str, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    result = fn()
    run.timings[name] = round((time.perf_counter() - start) * 1000, 3)
    return result


def _preprocessed(state: EdgeLiteState, blob: bytes, run: _HeadRun) -> np.ndarray:
    """The model's input batch for ``blob``; the decoded image lives only here (freed when this returns)."""
    try:
        image = _timed(
            run, "decode", lambda: decode_image(blob, state.limits, resize_size=state.preprocessor.resize_size)
        )
    except UndecodableImage as exc:
        run.decoded_pixels = exc.decoded_pixels  # NOTE: its buffer was allocated before the data ran out
        raise
    run.decoded_pixels = image.width * image.height
    batch: np.ndarray = _timed(run, "preprocess", lambda: state.preprocessor.batch([image]))
    return batch


def _run_head(state: EdgeLiteState, blob: bytes, run: _HeadRun) -> bytes:
    batch = _preprocessed(state, blob, run)
    outputs = _timed(run, "head", lambda: state.head(batch))
    named = {t.name: out for t, out in zip(state.manifest.cut_tensors, outputs, strict=True)}
    manifest = state.manifest
    payload: bytes = _timed(
        run,
        "encode",
        lambda: encode_activations(
            named,
            model=manifest.model,
            weights=manifest.weights,
            cut=manifest.cut,
            codec=state.settings.codec,
            values=manifest.values_at(len(batch)),
        ),
    )
    return payload


async def _bounded_call(
    client: httpx.AsyncClient, method: str, path: str, limit: int, **kwargs: Any
) -> tuple[int, bytes]:
    """A call to the cloud: its status and its body as sent, refused (502) past ``limit`` bytes or in an encoding
    that was not asked for."""
    async with client.stream(method, path, **kwargs) as response:
        if response.headers.get("content-encoding", "identity") != "identity":
            raise BadGateway("the cloud answered with a content encoding that was not asked for")
        body = await _joined(
            response.aiter_raw(), limit, lambda: BadGateway(f"the cloud's reply to {path} exceeds {limit} bytes")
        )
        return response.status_code, body


def _dropped(exc: Exception) -> bool:
    """Whether ``exc`` is a connection the cloud accepted, then closed without a reply."""
    return isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.RemoteProtocolError)


async def _call_cloud(state: EdgeLiteState, payload: bytes) -> bytes:
    deadline_s = state.settings.request_timeout_s
    try:
        # NOTE: the read timeout bounds each wait for a chunk; a cloud that trickles its reply a byte at a time
        # never trips it, so the whole call has a deadline too
        async with asyncio.timeout(deadline_s):
            status, body = await _bounded_call(
                state.client,
                "POST",
                "/v1/tail",
                max_logits_reply_bytes(1, state.manifest.num_classes),  # NOTE: an error reply past it is a 502 too
                content=payload,
                headers={"Content-Type": MEDIA_TYPE, "Accept": MEDIA_TYPE},
            )
    except TimeoutError as exc:
        raise CloudTimeout(f"the cloud at {state.settings.cloud_url} did not answer within {deadline_s:g} s") from exc
    except httpx.TimeoutException as exc:
        raise CloudTimeout(f"the cloud at {state.settings.cloud_url} did not answer in time") from exc
    except httpx.TransportError as exc:
        hint = dropped_connection_hint(state.settings.cloud_url) if _dropped(exc) else ""
        raise CloudUnavailable(f"the cloud at {state.settings.cloud_url} cannot be reached: {exc}{hint}") from exc
    if status == 401:
        raise BadGateway(
            f"the cloud refused this edge's token (set the same SPLITINFER_TOKEN on both): {problem_detail(body)}"
        )
    if status == 409:
        raise CloudModelMismatch(
            f"the cloud at CLOUD_URL serves another model or weights than this edge's export; it refused the "
            f"payload: {problem_detail(body)}"
        )
    if status in (413, 415, 422):
        raise BadGateway(f"the cloud refused the payload ({status}): {problem_detail(body)}")
    if status == 503:
        raise CloudUnavailable("the cloud is overloaded or not ready", retry_after=1.0)
    if status in (408, 504):  # NOTE: a timeout on the way (Ray Serve's proxy answers 408 past its request_timeout_s)
        raise CloudTimeout(f"the cloud timed out ({status}): {problem_detail(body)}")
    if status != 200:
        raise BadGateway(f"the cloud answered {status}: {problem_detail(body)}")
    return body


@router.post(CLASSIFY_PATH)
async def classify(
    request: Request,
    state: StateDep,
    top_k: Annotated[int, Query(ge=1, le=1000)] = 5,
    logits: Annotated[bool, Query()] = False,
) -> dict[str, Any]:
    """Classify one image (multipart field `image`, or a raw `image/*` body; admitted before it is read)."""
    return await _classify(request, state, top_k, logits)


async def _classify(request: Request, state: EdgeLiteState, top_k: int, with_logits: bool) -> dict[str, Any]:
    start = time.perf_counter()
    blob = await _read_image(request, state)
    run = _HeadRun()
    timings = run.timings
    cost = images_cost([blob], state.limits, state.preprocessor.resize_size)
    try:
        with state.decode_budget.reserve(cost):
            # NOTE: anyio waits for the thread even if this task is cancelled: the reservation outlives the image
            payload = await run_in_threadpool(_run_head, state, blob, run)
    finally:
        state.heap.released(run.decoded_pixels)  # NOTE: the decoded image is freed by now (see _preprocessed)
    sent = time.perf_counter()
    reply = await _call_cloud(state, payload)
    timings["cloud_round_trip"] = round((time.perf_counter() - sent) * 1000, 3)
    manifest = state.manifest
    values = decode_logits(
        reply,
        model=manifest.model,
        weights=manifest.weights,
        cut=manifest.cut,
        batch_size=1,
        num_classes=manifest.num_classes,
    )
    timings["total"] = round((time.perf_counter() - start) * 1000, 3)
    return {
        "model": manifest.model,
        "weights_digest": manifest.weights,
        "cut": manifest.cut,
        "codec": state.settings.codec,
        "engine": state.settings.engine,
        "payload_bytes": len(payload),
        "completed_on": "cloud",
        "timings_ms": timings,
        **_result(values[0], manifest, top_k, with_logits),
    }


def _result(row: np.ndarray, manifest: Manifest, top_k: int, with_logits: bool) -> dict[str, Any]:
    shifted = np.exp(row.astype(np.float64) - row.max())
    probabilities = shifted / shifted.sum()
    order = np.argsort(-probabilities, kind="stable")[: min(top_k, row.shape[0])]
    labels = manifest.labels
    predictions = [
        {
            "index": int(i),
            "label": labels[i] if 0 <= i < len(labels) else f"class {int(i)}",
            "probability": float(probabilities[i]),
        }
        for i in order
    ]
    result: dict[str, Any] = {"predictions": predictions}
    if with_logits:
        result["logits"] = [float(v) for v in row]
    return result


@router.get("/v1/info")
async def info(state: StateDep) -> dict[str, Any]:
    """What this edge serves: the export's model, weights, cut and tensors, the codec and the engine."""
    manifest = state.manifest
    return {
        "service": "edge-lite",
        "model": manifest.model,
        "weights_digest": manifest.weights,
        "cut": manifest.cut,
        "tensors": [t.to_json() for t in manifest.cut_tensors],
        "codec": state.settings.codec,
        "engine": state.settings.engine,
        "precision": state.settings.openvino_precision if state.settings.engine == "openvino" else "f32",
        "providers": list(state.head.providers),
        "preprocessing": manifest.preprocessing,
        "cloud_url": state.settings.cloud_url,
    }


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request, state: StateDep) -> dict[str, str]:
    """Not draining, the head is loaded and the cloud serves the same model and weights."""
    if request.app.state.draining:
        raise ServiceUnavailable("the service is shutting down")
    try:
        async with asyncio.timeout(_INFO_TIMEOUT_S):
            status, body = await _bounded_call(
                state.client, "GET", "/v1/info", _MAX_INFO_BYTES, headers={"Accept-Encoding": "identity"}
            )
        # NOTE: an error's problem body is not the cloud's info (a 401 read as one said "another model")
        cloud = json.loads(body) if status == 200 else None
    except (httpx.HTTPError, ValueError, RecursionError, TimeoutError, BadGateway) as exc:
        hint = dropped_connection_hint(state.settings.cloud_url) if _dropped(exc) else ""
        raise ServiceUnavailable(f"cloud not ready: {type(exc).__name__}: {str(exc)[:200]}{hint}") from exc
    if status == 401:
        raise ServiceUnavailable(
            "cloud not ready: its /v1/info answered 401: it refused this edge's token (set the same "
            f"SPLITINFER_TOKEN on both): {problem_detail(body)}"
        )
    if status != 200:
        raise ServiceUnavailable(f"cloud not ready: its /v1/info answered {status}: {problem_detail(body)}")
    manifest = state.manifest
    if not isinstance(cloud, dict) or (cloud.get("model"), cloud.get("weights_digest")) != (
        manifest.model,
        manifest.weights,
    ):
        served = cloud if isinstance(cloud, dict) else {}
        raise ServiceUnavailable(
            f"model mismatch: the cloud serves {sanitize(str(served.get('model')), 100)!r} with weights "
            f"{sanitize(str(served.get('weights_digest')), 100)!r}; this edge's export has {manifest.model!r} "
            f"with weights {manifest.weights!r}"
        )
    return {"status": "ready", "cloud": "ok", "model": manifest.model, "weights_digest": manifest.weights}


@router.get("/metrics")
async def metrics(state: StateDep) -> Response:
    """Prometheus metrics."""
    return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)
