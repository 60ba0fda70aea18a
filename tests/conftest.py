"""Shared fixtures: deterministic models and real images (generated, never downloaded)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from splitinfer.samples import encode_image, synthetic_image

FIXED_SIZE_MODELS = {"vit_b_16": 224, "vit_b_32": 224, "vit_l_16": 224, "vit_l_32": 224, "vit_h_14": 224}
FIXED_SIZE_MODELS |= {"maxvit_t": 224, "inception_v3": 299}


def sweep_input_size(name: str) -> int:
    """The input of the slow sweep: 64x64 for the size-agnostic models, the others' own size."""
    return FIXED_SIZE_MODELS.get(name, 64)


# NOTE: the default suite's splitting tests take smaller inputs where the architecture allows it (a split
# equals the unsplit model at any valid size): inception_v3 its smallest, 75x75; torchvision's ViTs are built
# with image_size 64 (56 for vit_h_14's 14-pixel patches), which only shortens their position embedding.
# MaxViT's 7x7 window partitions need 224.
SMALL_VIT_SIZES = {"vit_b_16": 64, "vit_b_32": 64, "vit_l_16": 64, "vit_l_32": 64, "vit_h_14": 56}
DEFAULT_SUITE_SIZES = SMALL_VIT_SIZES | {"maxvit_t": 224, "inception_v3": 75}


def default_input_size(name: str) -> int:
    """The input of the default suite's splitting tests (batch 2, batch 1 at 224)."""
    return DEFAULT_SUITE_SIZES.get(name, 64)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> Iterator[None]:
    """One intra-op torch thread in the test process, whatever the order the tests run in.

    NOTE: the tests run many small forwards, where a second thread buys little; on a 2-core machine that
    is also running other work (the services that e2e tests start, other jobs) OpenMP's second thread waits
    for a core at every parallel op (on a busy machine, test_planning.py's slowest test: 2.4 s on one thread,
    98 s on two; densenet121's every-cut test: about 25 s and 44 s). Services started as processes set their
    own (SPLITINFER_THREADS); tests that need another count set it and restore it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _torch_threads_restored(_one_torch_thread: None) -> Iterator[None]:
    """A test that changes the test process's torch threads restores them: the one thread every test runs
    with, whatever ran before it (engine tests each set 1 again, and never restored what they set)."""
    yield
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
        pytest.fail("the test changed torch's intra-op threads (torch.set_num_threads) and did not restore them")


@pytest.fixture
def jpeg_bytes() -> bytes:
    return encode_image(synthetic_image())
