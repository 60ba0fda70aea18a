"""CLOUD_URL on both edges: a base URL of the cloud, http or https, without credentials, query or fragment.

A URL carrying ``user:password@`` was shown to anyone on the edge's ``/v1/info`` (and the demo page), and the
torch edge then failed every call with a 500 and a traceback (httpx made the credentials an Authorization
header, which aiohttp refuses beside credentials in the URL); a query or fragment ended up in front of
``/v1/tail``. Each is refused at startup in one line that does not repeat the password."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edge_lite.settings import EdgeLiteSettings
from edge_service import EdgeSettings
from splitinfer.failures import explain

REFUSED = [
    "http://user:s3cret@cloud:8001",
    "https://s3cret@cloud:8001",
    "ftp://cloud:8001",
    "cloud:8001",
    "http://cloud:8001/?token=s3cret",
    "http://cloud:8001/#s3cret",
    "http://:8001",
]


@pytest.mark.parametrize("url", REFUSED)
def test_a_cloud_url_that_cannot_work_is_refused_at_startup_without_its_secrets(url: str) -> None:
    for settings in (
        lambda: EdgeSettings(weights="none", cut="output", cloud_url=url),  # type: ignore[call-arg]
        lambda: EdgeLiteSettings(onnx_dir=Path("."), cloud_url=url),
    ):
        with pytest.raises(ValidationError) as refused:
            settings()
        line = explain(refused.value)
        assert line is not None and "cloud-url" in line, line
        assert "s3cret" not in line, line


@pytest.mark.parametrize("url", ["http://127.0.0.1:8001", "https://cloud.example:8443/", "http://cloud/prefix"])
def test_a_base_url_is_accepted(url: str) -> None:
    assert EdgeSettings(weights="none", cut="output", cloud_url=url).cloud_url == url  # type: ignore[call-arg]
    assert EdgeLiteSettings(onnx_dir=Path("."), cloud_url=url).cloud_url == url
