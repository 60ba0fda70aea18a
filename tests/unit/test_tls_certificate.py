"""One maker of self-signed certificates (bench/certificates.py) for the TLS benchmark and the TLS tests:
the benchmark fails loudly where openssl is missing, a test is skipped (they were two copies of the command)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from bench.certificates import OpensslMissing, self_signed_certificate
from tests.support import tls


def test_without_openssl_the_benchmark_fails_and_a_test_skips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # NOTE: no openssl there
    with pytest.raises(OpensslMissing, match="openssl"):
        self_signed_certificate(tmp_path)
    with pytest.raises(pytest.skip.Exception, match="openssl is not installed"):
        tls.self_signed_certificate(tmp_path)


def test_the_certificate_serves_127_0_0_1(tmp_path: Path) -> None:
    cert, key = tls.self_signed_certificate(tmp_path)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    assert client.get_ca_certs()[0]["subject"] == ((("commonName", "127.0.0.1"),),)
