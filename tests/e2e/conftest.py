"""What every end-to-end test shares: the services it started are killed when it ends, whatever happened."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from splitinfer.processes import Service


@pytest.fixture
def stop_all() -> Iterator[list[Service]]:
    services: list[Service] = []
    yield services
    for service in services:
        service.stop(signal.SIGKILL)
