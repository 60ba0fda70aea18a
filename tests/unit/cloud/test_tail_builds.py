"""A cut's first payload builds its tail before it joins a batch: the requests waiting for builds wait on the
event loop, not each in a thread of the shared pool (which the other requests' decodes need), and a build
runs torch with one thread (a pool thread that ran a team of every core would keep it)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from fastapi.testclient import TestClient

from cloud_service import CloudSettings, create_app
from shared.models import load_model
from shared.protocol import encode_activations
from shared.wire import MEDIA_TYPE

TINY = "tests.fixture_models:tiny_cnn"
CUTS = ["stem", "relu", "block.0", "block.1", "block", "mul", "add", "relu_1"]


def _payloads() -> list[bytes]:
    loaded = load_model(TINY, "none")
    graph = loaded.graph()
    x = torch.rand(1, *loaded.input_shape[1:], generator=torch.Generator().manual_seed(0))
    payloads = []
    for name in CUTS:
        head, _ = graph.split(name)
        with torch.no_grad():
            tensors = head(x)
        payloads.append(encode_activations(tensors, graph.cut(name), model=TINY, weights=loaded.digest, codec="fp32"))
    return payloads


def test_requests_waiting_for_tail_builds_hold_no_pool_threads() -> None:
    payloads = _payloads()
    app = create_app(CloudSettings(model=TINY, weights="none", tail_cache_size=2))
    inside = most = 0
    build_threads: list[int] = []
    lock = threading.Lock()
    with TestClient(app) as client:
        model = app.state.service.model
        built = model.tail

        def slow_tail(cut: str) -> object:
            """The model's tail lookup, its builds made slow (ONNX Runtime's take seconds)."""
            nonlocal inside, most
            with lock:
                inside += 1
                most = max(most, inside)
            try:
                if not model.has_tail(cut):
                    build_threads.append(torch.get_num_threads())
                    time.sleep(0.15)
                return built(cut)
            finally:
                with lock:
                    inside -= 1

        model.tail = slow_tail
        with ThreadPoolExecutor(len(payloads)) as senders:
            replies = list(
                senders.map(
                    lambda body: client.post("/v1/tail", content=body, headers={"Content-Type": MEDIA_TYPE}),
                    payloads,
                )
            )
    assert [r.status_code for r in replies] == [200] * len(payloads)
    # NOTE: one build at a time, plus the batcher's own lookup of a built tail
    assert most <= 2, f"{most} threads were in the tail lookup at once"
    assert build_threads and set(build_threads) == {1}, build_threads
