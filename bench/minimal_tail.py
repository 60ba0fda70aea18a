"""The minimal comparator of bench/overhead.py: read the body, safetensors load, the same fc, save.

bench/overhead.py runs it as a user would, under uvicorn's defaults (its access log on, one line per request):

    uvicorn --factory bench.minimal_tail:create_app --port PORT
"""

from __future__ import annotations

import safetensors.torch
import torch
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared.models import load_model


def create_app() -> Starlette:
    torch.set_num_threads(1)
    fc = load_model("resnet18", "none").module.get_submodule("fc").eval()  # the cloud's, with --weights none

    async def tail(request: Request) -> Response:
        tensors = safetensors.torch.load(await request.body())
        with torch.inference_mode():
            logits = fc(tensors["x"].flatten(1))
        return Response(safetensors.torch.save({"logits": logits}), media_type="application/octet-stream")

    return Starlette(routes=[Route("/tail", tail, methods=["POST"])])
