"""``splitinfer cloud --workers 2``: two real processes share one port and both serve tails."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from service_core.http import SERVED_BY_HEADER
from shared.models import load_model
from shared.wire import MEDIA_TYPE
from splitinfer.bench import cloud_payloads
from splitinfer.processes import Service, start_service, wait_until
from splitinfer.samples import encode_image, synthetic_image

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    cloud = start_service(
        "cloud", ["--model", "resnet18", "--weights", "none", "--workers", "2"], tmp_path_factory.mktemp("logs")
    )
    try:
        wait_until(cloud)
        yield cloud
    finally:
        cloud.stop()


def test_two_workers_on_one_port_both_serve(two_workers: Service) -> None:
    payload = cloud_payloads(load_model("resnet18", "none"), "avgpool", "fp32", [encode_image(synthetic_image())])[0]
    served_by: set[str] = set()
    deadline = time.monotonic() + 120  # NOTE: the second worker may still be loading its model
    while len(served_by) < 2 and time.monotonic() < deadline:
        # NOTE: a new connection each time: the kernel picks a worker per connection (SO_REUSEPORT).
        response = httpx.post(
            two_workers.url + "/v1/tail", content=payload, headers={"content-type": MEDIA_TYPE}, timeout=30
        )
        assert response.status_code == 200, response.text
        served_by.add(response.headers[SERVED_BY_HEADER])
    assert len(served_by) == 2, served_by
    assert len({instance.rsplit(":", 1)[1] for instance in served_by}) == 2  # two processes (pids)


def test_workers_stop_with_their_parent(two_workers: Service) -> None:
    """SIGTERM to the parent drains and stops every worker: nothing listens on the port afterwards."""
    assert two_workers.stop() == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(two_workers.url + "/healthz", timeout=5)
