"""The cloud's wire caches: the same answers as parsing and writing every payload in full."""

from __future__ import annotations

import pytest
import torch

from shared.errors import MalformedPayload, PayloadTooLarge
from shared.protocol import encode_logits
from shared.wire import WireLimits, read_header
from shared.wire_cache import HeaderCache, LogitsWriter
from tests.support.payloads import LIMITS, encode_one


def test_a_cached_header_is_the_parsed_header() -> None:
    cache = HeaderCache(LIMITS)
    first = encode_one(torch.rand(1, 8, 4, 4), "fp16")
    second = encode_one(torch.rand(1, 8, 4, 4), "fp16")  # NOTE: other data, the same header bytes
    assert cache.read(first) == read_header(first, LIMITS)
    assert cache.read(second) is cache.read(first)
    assert len(cache) == 1


def test_a_cached_header_is_checked_against_each_payload_s_length() -> None:
    cache = HeaderCache(LIMITS)
    whole = encode_one(torch.rand(1, 8, 4, 4), "fp32")
    cache.read(whole)
    with pytest.raises(MalformedPayload, match="outside"):
        cache.read(whole[:-4])  # NOTE: the same header, its data cut short: what read_header refuses
    with pytest.raises(MalformedPayload):
        cache.read(whole[:12])


def test_the_payload_limits_hold_before_the_cache() -> None:
    payload = encode_one(torch.rand(1, 8, 4, 4), "fp32")
    cache = HeaderCache(WireLimits(max_payload_bytes=len(payload) - 1))
    with pytest.raises(PayloadTooLarge):
        cache.read(payload)
    assert len(cache) == 0


def test_the_header_cache_is_bounded() -> None:
    cache = HeaderCache(LIMITS, entries=4)
    for channels in range(1, 11):
        cache.read(encode_one(torch.rand(1, channels, 2, 2), "fp32"))
        assert len(cache) <= 4


@pytest.mark.parametrize("shape", [(1, 10), (4, 1000), (0, 10)])
def test_written_logits_are_encode_logits_bytes(shape: tuple[int, int]) -> None:
    writer = LogitsWriter("resnet18", "sha256:abc")
    generator = torch.Generator().manual_seed(0)
    for cut in ("layer3", "flatten", "layer3"):
        logits = torch.randn(*shape, generator=generator)
        assert writer.write(logits, cut) == encode_logits(logits, model="resnet18", weights="sha256:abc", cut=cut)
    half = torch.randn(*shape, generator=generator).half()
    assert writer.write(half, "layer3") == encode_logits(half, model="resnet18", weights="sha256:abc", cut="layer3")
