"""Compact ``/v1/tail`` payloads that decode to a whole batch: what N of them at once cost a real cloud.

    PYTHONPATH=. .venv/bin/python bench/hostile_payloads.py --model resnet18 --count 8 --codec dct50+ans

Starts a cloud (``--weights none``, one thread) on a free loopback port, builds one payload of
``max_batch_size`` zero activations at the model's largest single-tensor cut with ``--codec`` (a few KiB;
``--codec image``: as many 8x8 JPEGs at cut input),
sends it ``--count`` times at once, and prints each answer's status and time and the cloud's peak RSS
(VmHWM) growth. Writes bench/results/hostile_payloads.json (one entry per codec and count).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import torch

from shared.models import load_model
from shared.protocol import encode_images
from shared.wire import MEDIA_TYPE, encode_payload
from splitinfer.processes import rss_kib, start_service, wait_until
from splitinfer.samples import encode_image, synthetic_image

__all__ = ["main", "measure", "small_payload"]

RESULTS = Path(__file__).parent / "results" / "hostile_payloads.json"


def small_payload(model: str, codec: str, batch: int) -> tuple[bytes, str, int]:
    """A few KiB that decode to ``batch`` items: zero activations at the model's largest single-tensor cut
    coded with ``codec``, or (``image``) 8x8 JPEGs at cut input; the body, its cut, and the bytes of the
    float32 tensors it decodes to."""
    loaded = load_model(model, "none")
    if codec == "image":  # NOTE: 8x8 JPEGs, each decoded to a normalized crop
        blob = encode_image(synthetic_image(8, 8))
        body = encode_images([blob] * batch, [], loaded.preprocessor, model=model, weights=loaded.digest, codec=codec)
        return body, "input", batch * 3 * loaded.preprocessor.crop_size**2 * 4
    cut = max(
        (c for c in loaded.graph().cuts if c.single_tensor and c.name not in ("input", "output")),
        key=lambda c: c.tensors[0].numel,
    )
    spec = cut.tensors[0]
    values = torch.zeros((batch, *spec.shape[1:]))
    body = encode_payload(
        {spec.name: values}, kind="activations", model=model, weights=loaded.digest, cut=cut.name, codec=codec
    )
    return body, cut.name, values.nbytes


def measure(model: str, codec: str, count: int, batch: int = 32) -> dict[str, Any]:
    body, cut_name, decoded = small_payload(model, codec, batch)
    with tempfile.TemporaryDirectory() as logs:
        cloud = start_service("cloud", ["--model", model, "--weights", "none"], Path(logs))
        try:
            wait_until(cloud, "/readyz")
            before = rss_kib(cloud.process.pid, "VmHWM")
            answers: list[tuple[int, float]] = []

            def post() -> None:
                started = time.perf_counter()
                reply = httpx.post(
                    f"{cloud.url}/v1/tail", content=body, headers={"Content-Type": MEDIA_TYPE}, timeout=300
                )
                answers.append((reply.status_code, round(time.perf_counter() - started, 2)))

            threads = [threading.Thread(target=post) for _ in range(count)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(300)
            growth_mib = (rss_kib(cloud.process.pid, "VmHWM") - before) / 1024
        finally:
            cloud.stop()
    return {
        "model": model,
        "cut": cut_name,
        "codec": codec,
        "batch": batch,
        "body_bytes": len(body),
        "decoded_mib": round(decoded / 2**20, 1),
        "count": count,
        "answers": sorted(answers),
        "peak_rss_growth_mib": round(growth_mib),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--codec", default="dct50+ans")
    parser.add_argument("--count", type=int, default=8)
    args = parser.parse_args()
    result = measure(args.model, args.codec, args.count)
    print(json.dumps(result))
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    RESULTS.write_text(json.dumps([*previous, result], indent=1) + "\n")


if __name__ == "__main__":
    main()
