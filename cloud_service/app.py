"""The cloud service: ``create_app(settings)`` builds it; the model lives in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI

from cloud_service.batching import DynamicBatcher
from cloud_service.routes import ROUTES, TAIL_PATH
from cloud_service.runtime import CloudModel, InlineWhenCheap
from cloud_service.settings import CloudSettings
from cloud_service.state import BatcherFactory, CloudState, TailBatcher, TailRunner
from service_core.admission import Admission
from service_core.app import create_service_app
from service_core.heap import HeapTrimmer, malloc_trim
from service_core.metrics import ServiceMetrics
from service_core.torch_threads import load_in_own_thread
from shared.preprocessing import ImageLimits
from shared.wire import WireLimits

__all__ = ["create_app", "dynamic_batcher"]

logger = logging.getLogger(__name__)


def _load(settings: CloudSettings) -> CloudModel:
    loaded = settings.load_model()
    model = CloudModel(
        loaded,
        device=settings.device,
        wire_limits=_wire_limits(settings),
        image_limits=ImageLimits(max_pixels=settings.max_image_pixels, max_batch_pixels=settings.max_batch_pixels),
        tail_cache_size=settings.tail_cache_size,
        channels_last=settings.channels_last,
        autocast=settings.autocast,
        compile_tails=settings.compile,
        engine=settings.engine,
        onnx_dir=settings.onnx_dir,
        onnx_threads=settings.onnx_threads,
        openvino_precision=settings.openvino_precision,
        fold_bn=settings.fold_bn,
    )
    logger.info(
        "cloud serving %s (%s weights %s) on %s, %d cuts",
        loaded.name,
        loaded.weights_kind,
        loaded.short_digest,
        settings.device,
        len(model.graph.cuts),
    )
    return model


def dynamic_batcher(run: TailRunner, executor: ThreadPoolExecutor, settings: CloudSettings) -> TailBatcher:
    return DynamicBatcher(
        run,
        executor,
        max_batch_size=settings.max_batch_size,
        max_delay_s=settings.max_delay_ms / 1000,
        max_queue=settings.max_queue,
    )


def create_app(settings: CloudSettings | None = None, *, batcher: BatcherFactory = dynamic_batcher) -> FastAPI:
    """Build the cloud app. With no settings, they are read from ``SPLITINFER_*`` variables.

    ``batcher`` builds what groups requests into model runs: this package's dynamic batcher, or Ray
    Serve's ``@serve.batch`` (cloud_service.serve).
    """
    settings = settings or CloudSettings()
    metrics = ServiceMetrics("cloud")

    wire_limits = _wire_limits(settings)
    threads = settings.torch_threads()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[CloudState]:
        model = await load_in_own_thread(_load, settings)
        metrics.set_info(model.loaded.name, model.loaded.digest)
        threads.apply_light()  # NOTE: the loop's thread runs cheap tails and small decodes
        with InlineWhenCheap(model.cheap_tail, initializer=threads.apply) as executor:

            def run(cut: str, requests: Sequence[tuple[torch.Tensor, ...]]) -> Sequence[torch.Tensor]:
                outputs = model.run(cut, requests)
                metrics.batch_size.observe(sum(int(o.shape[0]) for o in outputs))
                return outputs

            runs = batcher(run, executor, settings)
            runs.start()
            try:
                yield CloudState(settings, model, runs, metrics, threads, HeapTrimmer(malloc_trim()))
            finally:
                await runs.stop()

    limit = wire_limits.max_payload_bytes
    app = create_service_app(
        ROUTES,
        lifespan=lifespan,
        metrics=metrics,
        body_limit=lambda scope: limit if scope["path"] == TAIL_PATH else None,
        body_timeout_s=settings.body_timeout_s,
        opentelemetry=settings.opentelemetry,
        # NOTE: payloads in flight bounded in bytes before they are read (requests are bounded by MAX_QUEUE).
        admission=Admission(
            admits=lambda scope: scope["path"] == TAIL_PATH, max_body_bytes=settings.max_body_bytes_in_flight
        ),
    )
    app.state.token = settings.shared_token()
    return app


def _wire_limits(settings: CloudSettings) -> WireLimits:
    return WireLimits.for_batch(settings.max_batch_size, settings.max_payload_mib_per_image)
