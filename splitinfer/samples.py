"""Deterministic synthetic images (the library's :mod:`shared.samples`, under the name the CLI and the tests
have always imported)."""

from __future__ import annotations

from shared.samples import encode_image, generated_jpegs, synthetic_image

__all__ = ["encode_image", "generated_jpegs", "synthetic_image"]
