"""A self-signed certificate for TLS tests (bench/certificates.py makes it), the test skipped where the
``openssl`` command is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.certificates import OpensslMissing
from bench.certificates import self_signed_certificate as _make

__all__ = ["self_signed_certificate"]


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, written in ``folder``; the calling test is skipped when
    ``openssl`` is not installed."""
    try:
        return _make(folder)
    except OpensslMissing:
        pytest.skip("openssl is not installed")
