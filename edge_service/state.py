"""What the edge's lifespan holds while it serves, and the dependency that hands it to handlers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated, cast

from fastapi import Depends, Request

from edge_service.cloud_client import CloudClient
from edge_service.route_policy import RoutePolicy
from edge_service.runtime import EdgeModel
from edge_service.settings import EdgeSettings
from service_core.app import service_state
from service_core.decode_budget import DecodeBudget
from service_core.heap import HeapTrimmer
from service_core.metrics import ServiceMetrics
from service_core.torch_threads import TorchThreads

__all__ = ["EdgeState", "EdgeStateDep", "edge_state"]


@dataclass
class EdgeState:
    settings: EdgeSettings
    model: EdgeModel
    cloud: CloudClient
    executor: ThreadPoolExecutor
    metrics: ServiceMetrics
    routes: RoutePolicy
    """The one owner of the current route (fixed, or chosen by cut auto)."""
    threads: TorchThreads
    """torch's thread count, for work handed to the shared thread pool."""
    heap: HeapTrimmer
    """Gives the memory of large decoded images back after their request."""
    in_flight: int = 0
    decode_budget: DecodeBudget = field(init=False)
    """What the images of requests in progress take decoded (service_core.image_cost)."""

    def __post_init__(self) -> None:
        self.decode_budget = DecodeBudget(self.settings.max_decoded_bytes_in_flight)


async def edge_state(request: Request) -> EdgeState:
    # NOTE: async: FastAPI runs a plain def dependency in a worker thread, a hop per request.
    return cast(EdgeState, service_state(request))


EdgeStateDep = Annotated[EdgeState, Depends(edge_state)]
