"""The cloud service: ``create_app(settings)`` builds it; the model lives in the lifespan."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import torch
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from cloud_service.batching import Batcher, DynamicBatcher
from cloud_service.routes import router
from cloud_service.runtime import CloudModel
from cloud_service.settings import CloudSettings
from shared.metrics import ServiceMetrics, install_request_middleware
from shared.models import load_model
from shared.preprocessing import ImageLimits
from shared.problems import install_problem_handlers
from shared.wire import WireLimits

__all__ = ["BatcherFactory", "CloudState", "TailRunner", "create_app", "dynamic_batcher"]

TailRunner = Callable[[str, Sequence[tuple[torch.Tensor, ...]]], Sequence[torch.Tensor]]
BatcherFactory = Callable[
    [TailRunner, ThreadPoolExecutor, CloudSettings], Batcher[tuple[torch.Tensor, ...], torch.Tensor]
]

logger = logging.getLogger(__name__)


@dataclass
class CloudState:
    settings: CloudSettings
    model: CloudModel
    batcher: Batcher[tuple[torch.Tensor, ...], torch.Tensor]
    metrics: ServiceMetrics
    instance: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")


def _load(settings: CloudSettings) -> CloudModel:
    if settings.threads:
        torch.set_num_threads(settings.threads)
    loaded = load_model(settings.model, settings.weights, fallback_to_random=True)
    model = CloudModel(
        loaded,
        device=settings.device,
        wire_limits=WireLimits.for_batch(settings.max_batch_size, settings.max_payload_mib_per_image),
        image_limits=ImageLimits(max_pixels=settings.max_image_pixels),
        tail_cache_size=settings.tail_cache_size,
        channels_last=settings.channels_last,
        autocast=settings.autocast,
        compile_tails=settings.compile,
        engine=settings.engine,
        onnx_dir=settings.onnx_dir,
        onnx_threads=settings.onnx_threads,
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


def dynamic_batcher(
    run: TailRunner, executor: ThreadPoolExecutor, settings: CloudSettings
) -> Batcher[tuple[torch.Tensor, ...], torch.Tensor]:
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

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        model = await run_in_threadpool(_load, settings)
        metrics.set_info(model.loaded.name, model.loaded.digest)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tail") as executor:

            def run(cut: str, requests: Sequence[tuple[torch.Tensor, ...]]) -> Sequence[torch.Tensor]:
                outputs = model.run(cut, requests)
                metrics.batch_size.observe(sum(int(o.shape[0]) for o in outputs))
                return outputs

            runs = batcher(run, executor, settings)
            runs.start()
            app.state.cloud = CloudState(settings, model, runs, metrics)
            try:
                yield
            finally:
                app.state.draining = True
                await runs.stop()

    app = FastAPI(
        title="split-inference cloud",
        summary="Runs the tail of a split image classifier on payloads sent by edges.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.draining = False
    app.state.token = settings.shared_token()
    install_problem_handlers(app)
    install_request_middleware(app, metrics)
    app.include_router(router)
    return app
