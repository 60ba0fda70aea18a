"""The minimal split of bench/overhead.py: the floor of two HTTP processes on this machine.

    MINIMAL_CLOUD_URL=http://127.0.0.1:P uvicorn --factory bench.minimal_split:create_edge --port Q
    uvicorn --factory bench.minimal_split:create_cloud --port P

What a user who writes a split by hand would run, as lean as it gets: Starlette, resnet18 cut by hand at
``layer3`` (head: the stem and ``layer1``-``layer3``; tail: ``layer4``, the pooling and ``fc``), torchvision's
transforms, fp16 in a safetensors body, aiohttp between the two, uvicorn's defaults (its access log on).
No validation, no metrics, no admission, no deadlines, no request ids; the model runs on the event loop
(at concurrency 1 nothing waits for it). The edge answers with its timings, the cloud with the tail's
time in a header, so that its overhead is computed as the services' is.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import safetensors.torch
import torch
from PIL import Image
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from torch import nn
from torchvision import transforms

from shared.models import load_model

__all__ = ["create_cloud", "create_edge"]

_TAIL_HEADER = "x-tail-ms"


def _resnet18() -> nn.Module:
    module: nn.Module = load_model("resnet18", "none").module.eval()  # the services' model, with --weights none
    return module


def create_edge() -> Starlette:
    model = _resnet18()
    head = nn.Sequential(
        *(model.get_submodule(n) for n in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"))
    )
    preprocess = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    cloud_url = os.environ["MINIMAL_CLOUD_URL"] + "/tail"
    sessions: list[aiohttp.ClientSession] = []

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        sessions.append(aiohttp.ClientSession())
        yield
        await sessions[0].close()

    async def classify(request: Request) -> Response:
        form = await request.form()
        upload = form["image"]
        assert isinstance(upload, UploadFile)  # NOTE: a benchmark's own client sends it
        blob = await upload.read()
        timings: dict[str, float] = {}
        started = time.perf_counter()
        image = Image.open(io.BytesIO(blob)).convert("RGB")
        timings["decode"] = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        batch = preprocess(image).unsqueeze(0)
        timings["preprocess"] = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        with torch.inference_mode():
            activations = head(batch)
        timings["head"] = (time.perf_counter() - started) * 1000
        body = safetensors.torch.save({"x": activations.half()})
        started = time.perf_counter()
        async with sessions[0].post(cloud_url, data=body) as reply:
            data = await reply.read()
            tail_ms = float(reply.headers[_TAIL_HEADER])
        timings["cloud_round_trip"] = (time.perf_counter() - started) * 1000
        timings["cloud_tail"] = tail_ms
        logits = safetensors.torch.load(data)["logits"]
        return JSONResponse({"index": int(logits.argmax()), "timings_ms": timings})

    return Starlette(routes=[Route("/v1/classify", classify, methods=["POST"])], lifespan=lifespan)


def create_cloud() -> Starlette:
    model = _resnet18()
    tail = nn.Sequential(
        model.get_submodule("layer4"), model.get_submodule("avgpool"), nn.Flatten(1), model.get_submodule("fc")
    )

    async def run_tail(request: Request) -> Response:
        activations = safetensors.torch.load(await request.body())["x"]
        started = time.perf_counter()
        with torch.inference_mode():
            logits = tail(activations.float())
        tail_ms = (time.perf_counter() - started) * 1000
        return Response(
            safetensors.torch.save({"logits": logits}),
            media_type="application/octet-stream",
            headers={_TAIL_HEADER: json.dumps(tail_ms)},
        )

    return Starlette(routes=[Route("/tail", run_tail, methods=["POST"])])
