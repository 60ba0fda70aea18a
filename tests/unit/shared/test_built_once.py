"""Halves built on first use (the cloud's tails, the edge's splits) never hold up the halves already built.

Any client of an edge can ask for any cut (``?cut=``), and the cloud then builds that cut's tail. The build
ran under the lock every lookup takes: with ONNX Runtime or OpenVINO a tail is exported first (1.3 s for
resnet18 here), and the cloud's cache keeps 32 of resnet18's 70 cuts, so a client cycling through cuts
had the cloud rebuild a tail on every request while every other edge's batches waited for the lock. Now a
build runs outside it (one at a time; callers of the same cut wait for that one build)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

import cloud_service.runtime as runtime
from cloud_service import CloudSettings, create_app
from cloud_service.runtime import CloudModel
from edge_service.runtime import EdgeModel
from shared.built_once import BuiltOnce
from shared.models import LoadedModel, load_model
from shared.preprocessing import ImageLimits
from shared.protocol import encode_activations

TINY = "tests.fixture_models:tiny_cnn"
GUARD_S = 10.0
"""How long a lookup may take before the test calls it held up (no time is asserted)."""


def _lookup_while_a_build_blocks(
    block: Callable[[Callable[[Any], Any]], None], built: Callable[[], Any], slow: Callable[[], Any]
) -> None:
    """``block(split)`` makes the next build wait; ``slow()`` starts one in a thread, then ``built()`` (a
    lookup of what is already built) must return while it still waits."""
    release, entered = threading.Event(), threading.Event()

    def blocking(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def split(cut: Any) -> Any:
            entered.set()
            assert release.wait(3 * GUARD_S)
            return original(cut)

        return split

    block(blocking)
    builder = threading.Thread(target=slow)
    builder.start()
    try:
        assert entered.wait(GUARD_S), "the slow build never started"
        looked_up = threading.Thread(target=built)
        looked_up.start()
        looked_up.join(GUARD_S)
        assert not looked_up.is_alive(), "a lookup of a built half waited for another cut's build"
    finally:
        release.set()
        builder.join(GUARD_S)


def test_the_cloud_serves_built_tails_while_another_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    model = CloudModel(load_model(TINY, "none"))
    model.tail("block")

    def block(wrap: Callable[[Callable[[Any], Any]], Callable[[Any], Any]]) -> None:
        monkeypatch.setattr(model.graph, "split", wrap(model.graph.split))

    _lookup_while_a_build_blocks(block, lambda: model.tail("block"), lambda: model.tail("mean"))
    assert model.tail("mean") is model.tail("mean")


def test_the_edge_serves_built_splits_while_another_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    model = EdgeModel(load_model(TINY, "none"), ImageLimits())
    model.build(model.route_for("block", "fp16"))

    def block(wrap: Callable[[Callable[[Any], Any]], Callable[[Any], Any]]) -> None:
        monkeypatch.setattr(model.graph, "split", wrap(model.graph.split))

    _lookup_while_a_build_blocks(
        block,
        lambda: model.build(model.route_for("block", "fp16")),
        lambda: model.build(model.route_for("mean", "fp16")),
    )


def _payload(loaded: LoadedModel, cut_name: str) -> bytes:
    cut = loaded.graph().cut(cut_name)
    tensors = tuple(torch.zeros((1, *t.shape[1:])) for t in cut.tensors)
    return encode_activations(tensors, cut, model=TINY, weights=loaded.digest, codec="fp32")


def test_a_key_is_built_once_and_at_most_entries_are_kept() -> None:
    calls: list[str] = []

    def build(key: str) -> str:
        calls.append(key)
        return key.upper()

    cache = BuiltOnce(build, entries=2)
    assert [cache.get(k) for k in ("a", "a", "b", "a", "c")] == ["A", "A", "B", "A", "C"]
    assert calls == ["a", "b", "c"] and "b" not in cache and "a" in cache and "c" in cache
    threads = [threading.Thread(target=cache.get, args=("d",)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(GUARD_S)
    assert calls.count("d") == 1


@pytest.mark.parametrize("inline", [True, False], ids=["cheap-tail-on-the-loop", "tail-on-its-thread"])
def test_the_cloud_answers_a_built_cut_while_a_new_cut_is_built(monkeypatch: pytest.MonkeyPatch, inline: bool) -> None:
    """End to end in process: a payload for a new cut (its tail being built, held here) does not hold up the
    answer to a payload of a cut already built, whether its tail is cheap enough for the event loop or runs on
    the tail thread. Before, the build ran inside the batcher, whose runs are serialized: every batch waited."""

    if not inline:
        monkeypatch.setattr(runtime, "INLINE_TAIL_FLOPS", 0)
    app = create_app(CloudSettings(model=TINY, weights="none"))  # type: ignore[call-arg]
    headers = {"content-type": "application/vnd.splitinfer+safetensors"}
    with TestClient(app) as client:
        loaded = load_model(TINY, "none")
        built, new = _payload(loaded, "block"), _payload(loaded, "mean")
        assert client.post("/v1/tail", content=built, headers=headers).status_code == 200
        model: CloudModel = app.state.service.model
        statuses: list[int] = []

        def block(wrap: Callable[[Callable[[Any], Any]], Callable[[Any], Any]]) -> None:
            monkeypatch.setattr(model.graph, "split", wrap(model.graph.split))

        _lookup_while_a_build_blocks(
            block,
            lambda: statuses.append(client.post("/v1/tail", content=built, headers=headers).status_code),
            lambda: statuses.append(client.post("/v1/tail", content=new, headers=headers).status_code),
        )
    assert statuses == [200, 200]


class _CountedLock:
    """A lock that counts the callers that have asked for it (held or waiting)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counting = threading.Lock()
        self.asked = 0

    def __enter__(self) -> None:
        with self._counting:
            self.asked += 1
        self._lock.acquire()

    def __exit__(self, *_: object) -> None:
        self._lock.release()


def test_the_callers_of_a_failing_build_get_its_error_and_do_not_build_again() -> None:
    """A build that failed was run again by each caller that had waited for it, one after another, holding up
    every other key's build meanwhile: 8 requests of a cut whose build fails (1.3 s each to export an ONNX tail)
    kept every new cut waiting 8 times as long (7 more builds on the old code). They now get the error of the
    build they waited for; a later caller builds again."""
    calls: list[str] = []
    release = threading.Event()

    def build(key: str) -> str:
        calls.append(key)
        release.wait(GUARD_S)
        raise RuntimeError(f"cannot build {key}")

    cache: BuiltOnce[str, str] = BuiltOnce(build)
    counted = _CountedLock()
    cache._building = counted  # type: ignore[assignment]
    errors: list[BaseException] = []

    def call() -> None:
        try:
            cache.get("a")
        except RuntimeError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for _ in range(int(GUARD_S * 100)):  # NOTE: bounded; the callers all wait for the one build
        if counted.asked == 8:
            break
        threading.Event().wait(0.01)
    release.set()
    for thread in threads:
        thread.join(GUARD_S)
    assert calls == ["a"] and len(errors) == 8
    assert all(str(error) == "cannot build a" for error in errors)
    with pytest.raises(RuntimeError):
        cache.get("a")  # NOTE: a later caller tries again
    assert calls == ["a", "a"] and "a" not in cache and not cache._flights
