"""``POST /v1/tail`` answers JSON when ``Accept`` prefers it, weighing each media type's ``q``."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from shared.wire import MEDIA_TYPE
from tests.unit.cloud.test_cloud_hardening import HEADERS, _payload, cloud  # noqa: F401  (the fixture)

JSON = "application/json"


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (JSON, JSON),
        ("Application/JSON", JSON),  # before: the wire payload (media types are case-insensitive)
        (f"{JSON}, {MEDIA_TYPE}", JSON),
        (f"{JSON};q=0.2, */*;q=0.1", JSON),
        (f"{JSON};q=0", MEDIA_TYPE),  # before: JSON, which the client refused
        (f"{MEDIA_TYPE};q=1, {JSON};q=0.1", MEDIA_TYPE),  # before: JSON
        (f"{JSON};q=0.5, */*", MEDIA_TYPE),  # before: JSON
        (f"{JSON};q=nan", MEDIA_TYPE),
        (f"{JSON};q=abc", MEDIA_TYPE),
        ("application/jsonx", MEDIA_TYPE),  # before: JSON
        ("text/html", MEDIA_TYPE),
        ("", MEDIA_TYPE),
    ],
)
def test_accept_chooses_the_reply_s_media_type(cloud: TestClient, accept: str, expected: str) -> None:  # noqa: F811
    response = cloud.post("/v1/tail", content=_payload(0.5), headers={**HEADERS, "Accept": accept})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == expected
    if expected == JSON:
        assert len(response.json()["logits"]) == 1
