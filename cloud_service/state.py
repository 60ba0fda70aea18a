"""What the cloud's lifespan holds while it serves, and the dependency that hands it to handlers."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated, Protocol, cast

import torch
from fastapi import Depends, Request

from cloud_service.batching import BatchStats
from cloud_service.runtime import CloudModel
from cloud_service.settings import CloudSettings
from service_core.app import service_state
from service_core.decode_budget import DecodeBudget
from service_core.heap import HeapTrimmer
from service_core.metrics import ServiceMetrics
from service_core.torch_threads import TorchThreads

__all__ = ["BatcherFactory", "CloudState", "CloudStateDep", "TailBatcher", "TailRunner", "Tensors", "cloud_state"]

Tensors = tuple[torch.Tensor, ...]
TailRunner = Callable[[str, Sequence[Tensors]], Sequence[torch.Tensor]]
"""Runs the tail of one cut on several requests' tensors; one logits tensor per request."""


class TailBatcher(Protocol):
    """What groups tail requests into model runs: cloud_service.batching's, or Ray Serve's (cloud_service.serve)."""

    def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def submit(self, key: str, value: Tensors, size: int = 1) -> tuple[torch.Tensor, BatchStats]: ...


BatcherFactory = Callable[[TailRunner, ThreadPoolExecutor, CloudSettings], TailBatcher]


@dataclass
class CloudState:
    settings: CloudSettings
    model: CloudModel
    batcher: TailBatcher
    metrics: ServiceMetrics
    threads: TorchThreads
    heap: HeapTrimmer
    """Gives the memory of large images decoded at cut ``input`` back to the system (service_core.heap)."""
    instance: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    decode_budget: DecodeBudget = field(init=False)
    tail_builds: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held while a tail is built before its batch: requests waiting for builds wait here, on the event loop,
    not each in a thread of the shared pool (builds run one at a time anyway)."""

    def __post_init__(self) -> None:
        self.decode_budget = DecodeBudget(self.settings.max_decoded_bytes_in_flight)


async def cloud_state(request: Request) -> CloudState:
    # NOTE: async: FastAPI runs a plain def dependency in a worker thread, a hop per request.
    return cast(CloudState, service_state(request))


CloudStateDep = Annotated[CloudState, Depends(cloud_state)]
