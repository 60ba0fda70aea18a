"""Shared fixtures: deterministic models and real images (generated, never downloaded)."""

from __future__ import annotations

import pytest

from splitinfer.samples import encode_image, synthetic_image

FIXED_SIZE_MODELS = {"vit_b_16": 224, "vit_b_32": 224, "vit_l_16": 224, "vit_l_32": 224, "vit_h_14": 224}
FIXED_SIZE_MODELS |= {"maxvit_t": 224, "inception_v3": 299}


def sweep_input_size(name: str) -> int:
    """The smallest input each model accepts that keeps the sweeps fast (the models are size-agnostic)."""
    return FIXED_SIZE_MODELS.get(name, 64)


@pytest.fixture
def jpeg_bytes() -> bytes:
    return encode_image(synthetic_image())
