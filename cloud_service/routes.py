"""The cloud's HTTP routes: ``/v1/info`` here, ``/v1/tail`` (the hot path) in cloud_service.tail_endpoint."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from cloud_service.auth import check_bearer
from cloud_service.schemas import CloudInfo
from cloud_service.state import CloudState, CloudStateDep
from cloud_service.tail_endpoint import TAIL_OPERATION, TAIL_PATH, serve_tail
from service_core.app import ServiceRoutes
from service_core.direct_routes import DirectRoute
from service_core.http import versions
from service_core.openapi import problem_responses

__all__ = ["ROUTES", "TAIL_PATH", "readiness", "router"]

router = APIRouter()


async def _authorize(request: Request) -> None:
    """With a token configured, /v1/* needs ``Authorization: Bearer <token>`` (compared in constant time)."""
    check_bearer(getattr(request.app.state, "token", None), request.headers.get("authorization", ""))


v1 = APIRouter(prefix="/v1", tags=["inference"], dependencies=[Depends(_authorize)])


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
    "split-inference cloud",
    "Runs the tail of a split image classifier on payloads sent by edges.",
    router,
    readiness,
    direct=(DirectRoute(TAIL_PATH, serve_tail, TAIL_OPERATION),),
)
