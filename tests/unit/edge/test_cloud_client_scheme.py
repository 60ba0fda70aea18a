"""An edge whose CLOUD_URL says http:// while the cloud serves HTTPS: the cloud drops every connection
without a reply, and the edge's error says what is most likely wrong (over real loopback sockets)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import httpx
import pytest

from edge_service.cloud_client import CloudClient
from shared.errors import CloudUnavailable
from tests.support.tls import self_signed_certificate


async def _failures(folder: Path, *, direct: bool) -> list[str]:
    """The details of a ``/v1/info`` and a ``/v1/tail`` call with an http:// URL to a TLS server."""
    certificate, key = self_signed_certificate(folder)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate, key)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    client = CloudClient(
        f"http://127.0.0.1:{port}",
        connect_timeout_s=2,
        read_timeout_s=5,
        connect_retries=0,
        transport=None if direct else httpx.AsyncHTTPTransport(),
    )
    details: list[str] = []
    try:
        for call in (
            client.info(),
            client.run_tail(b"payload", request_id="r", deadline_s=5, max_reply_bytes=1000),
        ):
            with pytest.raises(CloudUnavailable) as caught:
                await call
            details.append(caught.value.detail)
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
    return details


@pytest.mark.parametrize("direct", [False, True], ids=["httpx", "direct"])
def test_plain_http_to_a_tls_cloud_names_the_scheme(tmp_path: Path, direct: bool) -> None:
    for detail in asyncio.run(_failures(tmp_path, direct=direct)):
        assert "CLOUD_URL must start with https://" in detail, detail
