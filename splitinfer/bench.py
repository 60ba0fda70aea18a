"""``splitinfer bench``: load against an edge or a cloud, and the in-process baseline, by one harness."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import torch

from shared.models import LoadedModel, load_model
from shared.preprocessing import decode_image
from shared.protocol import encode_activations, encode_images
from shared.samples import generated_jpegs
from shared.splitting import INPUT_CUT
from shared.wire import MEDIA_TYPE
from splitinfer.loadgen import LoadResult, Outcome, Send, run_load

__all__ = [
    "USER_DEFAULT_ENV",
    "bench_images",
    "cloud_batch_limit",
    "cloud_payloads",
    "cloud_sender",
    "edge_sender",
    "local_baseline",
    "local_baseline_process",
    "run_target",
]

USER_DEFAULT_ENV = ("SPLITINFER_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY")
"""Variables a benchmark harness may have set that a user running the model would not have: removed
from the in-process baseline's environment, so it runs with torch's defaults."""


def bench_images(folder: str | None = None, count: int = 8) -> list[bytes]:
    """JPEG/PNG/WebP files from ``folder``, or ``count`` generated 640x480 JPEGs (q=90)."""
    if folder:
        suffixes = {".jpg", ".jpeg", ".png", ".webp"}
        return [p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.suffix.lower() in suffixes]
    return generated_jpegs(count)


def edge_sender(images: Sequence[bytes], top_k: int = 5) -> Send:
    async def send(client: httpx.AsyncClient, index: int) -> Outcome:
        image = images[index % len(images)]
        response = await client.post(
            "/v1/classify", params={"top_k": top_k}, files={"image": ("image.jpg", image, "image/jpeg")}
        )
        forwarded = int(response.json().get("payload_bytes", 0)) if response.status_code == 200 else 0
        return response.status_code, len(image), forwarded

    return send


_INFO_MAX_BYTES = 64 * 1024
"""Most bytes of a cloud's ``/v1/info`` read to find its batch limit."""


def cloud_batch_limit(url: str, timeout_s: float = 5.0) -> int | None:
    """The most images the cloud at ``url`` takes in one payload (its ``MAX_BATCH_SIZE``, from ``/v1/info``),
    or None when it does not say (unreachable, a token required, not a splitinfer cloud): then the load itself
    shows what is wrong."""
    try:
        with httpx.Client(base_url=url, timeout=timeout_s) as client, client.stream("GET", "/v1/info") as response:
            if response.status_code != 200:
                return None
            body = b""
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > _INFO_MAX_BYTES:
                    return None
        limit = json.loads(body)["batching"]["max_batch_size"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None
    return limit if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1 else None


def cloud_payloads(
    loaded: LoadedModel, cut: str, codec: str, images: Sequence[bytes], per_request: int = 1
) -> list[bytes]:
    """Wire payloads of ``per_request`` images each, as an edge at ``cut`` with ``codec`` would send them."""
    graph = loaded.graph()
    resolved = graph.cut(cut)
    head, _ = graph.split(resolved)
    common = {"model": loaded.name, "weights": loaded.digest, "codec": codec}
    payloads = []
    for start in range(len(images)):
        blobs = [images[(start + k) % len(images)] for k in range(per_request)]
        decoded = [decode_image(blob) for blob in blobs]
        if resolved.name == INPUT_CUT:
            payloads.append(encode_images(blobs, decoded, loaded.preprocessor, **common))
            continue
        with torch.inference_mode():
            shipped = head(loaded.preprocessor.batch(decoded))
        payloads.append(encode_activations(shipped, resolved, **common))
    return payloads


def cloud_sender(payloads: Sequence[bytes]) -> Send:
    async def send(client: httpx.AsyncClient, index: int) -> Outcome:
        payload = payloads[index % len(payloads)]
        response = await client.post("/v1/tail", content=payload, headers={"Content-Type": MEDIA_TYPE})
        return response.status_code, len(payload), len(payload)

    return send


def local_baseline(
    loaded: LoadedModel,
    images: Sequence[bytes],
    *,
    duration_s: float | None,
    requests: int | None,
    warmup_s: float,
    name: str = "in-process",
) -> LoadResult:
    """Baseline (a): decode + preprocess + full forward in this process, one image at a time."""
    result = LoadResult(name, 1)

    def one(index: int) -> None:
        image = decode_image(images[index % len(images)], resize_size=loaded.preprocessor.resize_size)
        with torch.inference_mode():
            loaded.module(loaded.preprocessor.batch([image]))

    warm_until = time.perf_counter() + warmup_s
    index = 0
    while time.perf_counter() < warm_until:
        one(index)
        index += 1
    started = time.perf_counter()
    deadline = started + duration_s if duration_s is not None else float("inf")
    count = 0
    while time.perf_counter() < deadline and (requests is None or count < requests):
        before = time.perf_counter()
        one(count)
        result.latencies_ms.append((time.perf_counter() - before) * 1000)
        count += 1
    result.duration_s = time.perf_counter() - started
    return result


def local_baseline_process(
    image_dir: Path,
    requests: int,
    *,
    model: str = "resnet18",
    weights: str = "none",
    warmup_s: float = 2.0,
    threads: int | None = None,
) -> list[float]:
    """The in-process baseline as a user runs it: ``splitinfer bench --target local`` in a process of its
    own with default settings (decode + preprocess + the whole model, one image at a time), or with
    ``threads`` torch threads (``OMP_NUM_THREADS``). Latencies in ms."""
    env = {k: v for k, v in os.environ.items() if k not in USER_DEFAULT_ENV}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "latencies.json"
        command = [sys.executable, "-m", "splitinfer", "bench", "--target", "local", "--images", str(image_dir)]
        command += ["--requests", str(requests), "--warmup", str(warmup_s), "--model", model, "--weights", weights]
        subprocess.run([*command, "--latencies", str(out)], env=env, check=True, capture_output=True, timeout=600)
        latencies: list[float] = json.loads(out.read_text())
    return latencies


def run_target(
    target: str,
    *,
    url: str,
    images: Sequence[bytes],
    concurrency: int,
    duration_s: float | None,
    requests: int | None,
    warmup_s: float,
    name: str,
    model: str = "resnet18",
    weights: str = "none",
    cut: str = "layer3",
    codec: str = "fp16",
    per_request: int = 1,
    progress: bool = True,
) -> LoadResult:
    if target == "local":
        return local_baseline(
            load_model(model, weights), images, duration_s=duration_s, requests=requests, warmup_s=warmup_s, name=name
        )
    if target == "edge":
        send = edge_sender(images)
    elif target == "cloud":
        send = cloud_sender(cloud_payloads(load_model(model, weights), cut, codec, images, per_request))
    else:
        raise ValueError(f"unknown bench target {target!r}: edge, cloud or local")
    return asyncio.run(
        run_load(
            send,
            name=name,
            base_url=url,
            concurrency=concurrency,
            duration_s=duration_s,
            requests=requests,
            warmup_s=warmup_s,
            images_per_request=per_request if target == "cloud" else 1,
            progress=progress,
        )
    )
