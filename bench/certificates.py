"""A self-signed certificate for 127.0.0.1, made with the ``openssl`` command: for bench/tls_loop.py, and for
the TLS tests through tests/support/tls.py (which skips a test where openssl is missing; a benchmark fails)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

__all__ = ["OpensslMissing", "self_signed_certificate"]


class OpensslMissing(RuntimeError):
    """The ``openssl`` command is not installed."""


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its subject and alternative name; RSA 2048, valid for a day) and its key,
    written in ``folder`` as cert.pem and key.pem. :class:`OpensslMissing` where ``openssl`` is not installed;
    ``subprocess.CalledProcessError`` (with openssl's output) where it fails."""
    if shutil.which("openssl") is None:
        raise OpensslMissing("making a self-signed certificate needs the openssl command (apt-get install openssl)")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key
