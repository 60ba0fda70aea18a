"""The edge service: ``create_app(settings)`` builds it; the model and the cloud client live in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import httpx
import torch
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from edge_service.breaker import CircuitBreaker
from edge_service.cloud_client import CloudClient
from edge_service.cut_selector import CutSelector, SelectorSettings
from edge_service.routes import CLASSIFY_PATHS, readiness, router
from edge_service.runtime import EdgeModel, Route
from edge_service.settings import EdgeSettings
from edge_service.state import EdgeState
from service_core.app import create_service_app
from service_core.metrics import ServiceMetrics
from shared.models import load_model
from shared.planning import Profile
from shared.preprocessing import ImageLimits
from shared.splitting import OUTPUT_CUT
from shared.units import parse_bandwidth, parse_duration

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


def _selector_settings(settings: EdgeSettings) -> SelectorSettings:
    return SelectorSettings(
        bandwidth_bps=parse_bandwidth(settings.link_bandwidth),
        rtt_s=parse_duration(settings.link_rtt),
        max_logit_error=settings.max_logit_error,
        replan_interval_s=settings.replan_interval_s,
        switch_margin=settings.switch_margin,
        min_dwell_s=settings.min_dwell_s,
        probe_interval_s=settings.probe_interval_s,
        calibrate=settings.calibrate_profiles,
        explore_margin=settings.explore_margin,
        measurement_ttl_s=settings.measurement_ttl_s,
    )


def _load(settings: EdgeSettings, metrics: ServiceMetrics) -> tuple[EdgeModel, CutSelector | None]:
    """The model at its cut; for ``auto``, also the selector that chose the cut and keeps choosing."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    loaded = load_model(settings.model, settings.weights, fallback_to_random=True, options=settings.model_options())
    limits = ImageLimits(
        max_bytes=settings.max_upload_bytes, max_pixels=settings.max_image_pixels, formats=settings.formats
    )
    selector = None
    if settings.cut == "auto" and settings.edge_profile is not None and settings.cloud_profile is not None:
        edge, cloud = Profile.load(settings.edge_profile), Profile.load(settings.cloud_profile)
        if edge.model != settings.model:
            raise ValueError(f"the edge profile is of {edge.model!r}, not {settings.model!r}")
        model = EdgeModel(loaded, OUTPUT_CUT, settings.resolved_codec(OUTPUT_CUT), limits)  # the selector moves it

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
        model.build(model.route)
        logger.info(
            "cut auto: %s with %s, predicted %.1f ms for %s and RTT %s",
            model.cut.name,
            model.codec,
            selector.current.latency_ms,
            settings.link_bandwidth,
            settings.link_rtt,
        )
    else:
        model = EdgeModel(loaded, settings.cut, settings.resolved_codec(settings.cut), limits)
    logger.info(
        "edge serving %s (%s weights %s), cut %s, codec %s, cloud %s",
        loaded.name,
        loaded.weights_kind,
        loaded.short_digest,
        model.cut.name,
        model.codec,
        settings.cloud_url,
    )
    return model, selector


def create_app(
    settings: EdgeSettings | None = None, *, cloud_transport: httpx.AsyncBaseTransport | None = None
) -> FastAPI:
    """Build the edge app. With no settings, they are read from ``SPLITINFER_*`` variables.

    ``cloud_transport`` replaces the network under the cloud client (tests use ``httpx.MockTransport``).
    """
    settings = settings or EdgeSettings()
    metrics = ServiceMetrics("edge")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[EdgeState]:
        model, selector = await run_in_threadpool(_load, settings, metrics)
        metrics.set_info(model.loaded.name, model.loaded.digest, model.cut.name, model.codec)
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
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="head") as executor:
            try:
                yield EdgeState(settings, model, cloud, executor, metrics, selector)
            finally:
                await cloud.aclose()

    return create_service_app(
        title="split-inference edge",
        summary="Classifies images: runs the head of a split model here and the tail in the cloud.",
        lifespan=lifespan,
        metrics=metrics,
        routers=[router],
        readiness=readiness,
        body_limit=lambda scope: settings.max_upload_bytes if scope["path"] in CLASSIFY_PATHS else None,
    )
