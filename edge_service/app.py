"""The edge service: ``create_app(settings)`` builds it; the model and the cloud client live in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import fields
from typing import Any

import httpx
from fastapi import FastAPI

from edge_service.breaker import CircuitBreaker
from edge_service.cloud_client import CloudClient
from edge_service.cut_selector import CutSelector, SelectorSettings
from edge_service.route_policy import FixedRoute, RoutePolicy
from edge_service.routes import CLASSIFY_PATHS, ROUTES
from edge_service.runtime import EdgeModel, Route
from edge_service.settings import EdgeSettings
from edge_service.state import EdgeState
from service_core.admission import Admission
from service_core.app import create_service_app
from service_core.heap import HeapTrimmer, malloc_trim
from service_core.metrics import ServiceMetrics
from service_core.torch_threads import load_in_own_thread
from shared.planning import GENERATED_IMAGES, GENERATED_IMAGES_NOTE, Profile
from shared.preprocessing import ImageLimits

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


def _selector_settings(settings: EdgeSettings) -> SelectorSettings:
    """The selector's settings that the edge's settings set (same names); the rest keep their defaults."""
    configured = {f.name for f in fields(SelectorSettings)} & set(EdgeSettings.model_fields)
    return SelectorSettings(**{name: getattr(settings, name) for name in configured})


def _engine_options(settings: EdgeSettings) -> dict[str, Any]:
    """What runs the head (issue 20): torch, or ONNX Runtime / OpenVINO from a verified export."""
    return {
        "engine": settings.engine,
        "onnx_dir": settings.onnx_dir,
        "onnx_threads": settings.onnx_threads,
        "openvino_precision": settings.openvino_precision,
        "fold_bn": settings.fold_bn,
        "head_workers": settings.resolved_head_workers(),
    }


def _load(settings: EdgeSettings, metrics: ServiceMetrics) -> tuple[EdgeModel, RoutePolicy]:
    """The model and the policy that owns its current route: a fixed cut, or cut auto's selector."""
    loaded = settings.load_model()
    limits = ImageLimits(
        max_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_image_pixels,
        formats=settings.formats,
        max_batch_pixels=settings.max_batch_pixels,
    )
    model = EdgeModel(loaded, limits, **_engine_options(settings))
    policy: RoutePolicy
    if settings.cut == "auto" and settings.edge_profile is not None and settings.cloud_profile is not None:
        edge, cloud = Profile.load(settings.edge_profile), Profile.load(settings.cloud_profile)
        if edge.model != settings.model:
            raise ValueError(f"the edge profile is of {edge.model!r}, not {settings.model!r}")
        if edge.images == GENERATED_IMAGES and loaded.weights_kind != "random":
            logger.warning("cut auto: %s", GENERATED_IMAGES_NOTE)

        def switched(route: Route) -> None:
            metrics.set_info(loaded.name, loaded.digest, route.cut.name, route.codec)

        selector = CutSelector(
            model,
            edge,
            cloud,
            _selector_settings(settings),
            codec_for=settings.resolved_codec,
            registry=metrics.registry,
            on_switch=switched,
        )
        logger.info(
            "cut auto: %s with %s, predicted %.1f ms for %.1f Mbit/s and RTT %.1f ms",
            selector.route.cut.name,
            selector.route.codec,
            selector.current.latency_ms,
            settings.link_bandwidth / 1e6,
            settings.link_rtt * 1000,
        )
        policy = selector
    else:
        policy = FixedRoute(model.route_for(settings.cut, settings.resolved_codec(settings.cut)))
    model.build(policy.route)  # NOTE: at startup, so a cut that cannot be split fails here
    logger.info(
        "edge serving %s (%s weights %s), cut %s, codec %s, cloud %s",
        loaded.name,
        loaded.weights_kind,
        loaded.short_digest,
        policy.route.cut.name,
        policy.route.codec,
        settings.cloud_url,
    )
    return model, policy


def create_app(
    settings: EdgeSettings | None = None, *, cloud_transport: httpx.AsyncBaseTransport | None = None
) -> FastAPI:
    """Build the edge app. With no settings, they are read from ``SPLITINFER_*`` variables.

    ``cloud_transport`` replaces the network under the cloud client (tests use ``httpx.MockTransport``).
    """
    settings = settings or EdgeSettings()
    metrics = ServiceMetrics("edge")
    threads = settings.torch_threads()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[EdgeState]:
        model, policy = await load_in_own_thread(_load, settings, metrics)
        threads.apply_light()  # NOTE: the loop's thread decodes small replies
        metrics.set_info(model.loaded.name, model.loaded.digest, policy.route.cut.name, policy.route.codec)
        cloud = CloudClient(
            settings.cloud_url,
            connect_timeout_s=settings.connect_timeout_s,
            read_timeout_s=settings.read_timeout_s,
            token=settings.shared_token(),
            ca_bundle=settings.ca_bundle,
            connect_retries=settings.connect_retries,
            breaker=CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s),
            transport=cloud_transport,
        )
        workers = settings.resolved_head_workers()
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="head", initializer=threads.apply) as executor:
            try:
                yield EdgeState(settings, model, cloud, executor, metrics, policy, threads, HeapTrimmer(malloc_trim()))
            finally:
                await cloud.aclose()

    limit = settings.max_upload_bytes
    return create_service_app(
        ROUTES,
        lifespan=lifespan,
        metrics=metrics,
        body_limit=lambda scope: limit if scope["path"] in CLASSIFY_PATHS else None,
        body_timeout_s=settings.body_timeout_s,
        opentelemetry=settings.opentelemetry,
        # NOTE: before the body is read: held uploads cannot take more memory than these bounds allow.
        admission=Admission(
            admits=lambda scope: scope["path"] in CLASSIFY_PATHS,
            max_requests=settings.max_concurrent_requests,
            max_body_bytes=settings.max_body_bytes_in_flight,
        ),
    )
