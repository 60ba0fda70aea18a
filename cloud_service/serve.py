"""The cloud tier on Ray Serve: the same app, many replicas behind one endpoint (``pip install split-inference[ray]``).

Each replica runs the plain cloud app (cloud_service.app: the same routes, wire format, validation and
tail building); only the batching differs: requests are grouped by Ray Serve's ``@serve.batch``,
sized from the same settings (``max_batch_size`` requests, ``max_delay_ms``). Ray Serve's HTTP proxy
spreads requests over the replicas and the controller adds and removes replicas by load.

    serve run cloud_service.serve:build_app model=resnet18 num_replicas=2
    serve deploy deploy/ray-serve.yaml          # a cluster: autoscaling, CPUs/GPUs per replica

Ray moves the settings and its own control messages between the cluster's nodes as serialized Python
objects: run the cluster on a trusted network (Ray's own guidance). The edges reach it only through
the HTTP proxy, which speaks this project's wire format.

Arguments (``serve run`` key=value pairs, or ``args:`` in the config file) are the cloud's settings
(``model``, ``weights``, ``device``, ``max_batch_size``, ``max_delay_ms``, ...; unset ones come from
``SPLITINFER_*`` variables) plus the deployment's: ``num_replicas``, or ``min_replicas``,
``max_replicas`` and ``target_ongoing_requests`` for autoscaling; ``num_cpus`` and ``num_gpus`` per
replica; ``max_ongoing_requests``. The cloud's ``max_queue`` bounds the requests that wait in each Ray
Serve proxy for a replica (Ray's ``max_queued_requests``; past it Ray answers 503 + Retry-After): Ray's own
default is unbounded, and a waiting request holds every byte of its body in the proxy.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from fastapi import FastAPI
from ray import serve
from ray.serve import Application

from cloud_service.app import create_app
from cloud_service.batching import BatchStats, Call, run_calls
from cloud_service.settings import CloudSettings
from cloud_service.state import TailRunner

__all__ = ["DEPLOYMENT_NAME", "ServeBatcher", "SplitInferCloud", "build_app", "deployment_options"]

DEPLOYMENT_NAME = "splitinfer-cloud"
_DEPLOYMENT_KEYS = {
    "num_replicas",
    "min_replicas",
    "max_replicas",
    "target_ongoing_requests",
    "num_cpus",
    "num_gpus",
    "max_ongoing_requests",
}
Tensors = tuple[torch.Tensor, ...]
Result = tuple[torch.Tensor, BatchStats] | Exception


class ServeBatcher:
    """The cloud's batcher on ``@serve.batch``: one model run per cut in each batch Ray Serve forms."""

    def __init__(self, run: TailRunner, executor: ThreadPoolExecutor, settings: CloudSettings) -> None:
        self._run, self._executor = run, executor
        self._batched.set_max_batch_size(settings.max_batch_size)  # type: ignore[attr-defined]
        self._batched.set_batch_wait_timeout_s(settings.max_delay_ms / 1000)  # type: ignore[attr-defined]

    def start(self) -> None:
        """Ray Serve runs the batching loop."""

    async def stop(self) -> None:
        """Ray Serve drains the replica."""

    async def submit(self, key: str, value: Tensors, size: int = 1) -> tuple[torch.Tensor, BatchStats]:
        result: Result = await self._batched(Call(key, value, size, time.perf_counter()))
        if isinstance(result, Exception):
            raise result
        return result

    # NOTE: sized in images, as the model sees them: a request of 32 images fills a batch of 32 alone.
    @serve.batch(  # type: ignore[untyped-decorator]
        max_batch_size=8, batch_wait_timeout_s=0.002, batch_size_fn=lambda calls: sum(call.size for call in calls)
    )
    async def _batched(self, calls: list[Call[Tensors]]) -> list[Result]:
        return await run_calls(self._run, self._executor, calls)


def deployment_options(args: dict[str, Any], *, max_queue: int) -> dict[str, Any]:
    """Ray Serve deployment options from the deployment keys of ``args``, the requests waiting for a replica
    in each proxy bounded by ``max_queue`` (the cloud's setting)."""
    if max_queue < 1:
        raise ValueError(f"max_queue must be at least 1, not {max_queue}")
    # NOTE: Ray's default (-1) queues without bound in the proxy, and its proxy reads a waiting request's whole
    # body into memory meanwhile: the cloud's own queue bound is the one that holds under Ray.
    options: dict[str, Any] = {"name": DEPLOYMENT_NAME, "max_queued_requests": max_queue}
    autoscaling = {k: args[k] for k in ("min_replicas", "max_replicas", "target_ongoing_requests") if k in args}
    if autoscaling and "num_replicas" in args:
        raise ValueError("give num_replicas (a fixed count) or min_replicas/max_replicas (autoscaling), not both")
    if autoscaling:
        options["autoscaling_config"] = {
            "min_replicas": int(autoscaling.get("min_replicas", 1)),
            "max_replicas": int(autoscaling.get("max_replicas", 1)),
            "target_ongoing_requests": float(autoscaling.get("target_ongoing_requests", 2)),
        }
    else:
        options["num_replicas"] = int(args.get("num_replicas", 1))
    options["ray_actor_options"] = {
        "num_cpus": float(args.get("num_cpus", 1)),
        "num_gpus": float(args.get("num_gpus", 0)),
    }
    if "max_ongoing_requests" in args:
        options["max_ongoing_requests"] = int(args["max_ongoing_requests"])
    return options


@serve.ingress()
class SplitInferCloud:
    """One replica: the plain cloud app (its model loaded in the app's lifespan), batching on ``@serve.batch``."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self._settings = CloudSettings(**settings)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self._settings, batcher=ServeBatcher)


def build_app(args: dict[str, Any]) -> Application:
    """The Ray Serve application (``serve run cloud_service.serve:build_app key=value ...``).

    The settings are validated here, where the application is built, and travel to every replica.
    """
    settings = CloudSettings(**{k: v for k, v in args.items() if k not in _DEPLOYMENT_KEYS})
    options = deployment_options(args, max_queue=settings.max_queue)
    return serve.deployment(**options)(SplitInferCloud).bind(settings.model_dump())
