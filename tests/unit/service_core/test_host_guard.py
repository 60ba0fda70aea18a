"""A loopback-bound service answers loopback Host names only (DNS rebinding): the guard, and its settings."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from service_core.host_guard import LOOPBACK_NAMES, HostGuard, allowed_host_names, host_name


def _guarded(allowed: frozenset[str]) -> TestClient:
    app = Starlette(routes=[Route("/", lambda request: PlainTextResponse("served"))])
    return TestClient(HostGuard(app, allowed))


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost", "LOCALHOST:1", "[::1]:8000", "::1", "127.0.0.1"])
def test_loopback_names_are_answered(host: str) -> None:
    response = _guarded(LOOPBACK_NAMES).get("/", headers={"host": host})
    assert (response.status_code, response.text) == (200, "served")


@pytest.mark.parametrize("host", ["rebind.example:8000", "rebind.example", "127.0.0.1.rebind.example", "[::2]:80"])
def test_another_name_is_misdirected(host: str) -> None:
    response = _guarded(LOOPBACK_NAMES).get("/", headers={"host": host})
    assert response.status_code == 421
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"].endswith("/misdirected-request") and "ALLOWED_HOSTS" in problem["detail"]


def test_what_allowed_hosts_admits() -> None:
    assert allowed_host_names("127.0.0.1", "") == LOOPBACK_NAMES
    assert allowed_host_names("::1", "") == LOOPBACK_NAMES
    assert allowed_host_names("localhost", "") == LOOPBACK_NAMES
    assert allowed_host_names("0.0.0.0", "") is None  # NOTE: reachable from the network: any name
    assert allowed_host_names("127.0.0.1", "*") is None
    assert allowed_host_names("0.0.0.0", " Edge.Example , [2001:db8::1]") == LOOPBACK_NAMES | {
        "edge.example",
        "2001:db8::1",
    }


def test_host_names_lose_their_port_and_brackets() -> None:
    assert host_name("Edge.Example:8000") == "edge.example"
    assert host_name("[2001:db8::1]:443") == "2001:db8::1"
    assert host_name("2001:db8::1") == "2001:db8::1"


def test_a_service_answers_the_address_it_is_bound_to() -> None:
    """A service bound to 127.0.0.2 (or ::ffff:127.0.0.1, or a LAN address with ALLOWED_HOSTS set) answered
    421 to every request sent to that address, its own (http://127.0.0.2:8000/ as a browser or curl sends it)."""
    binds = (
        ("127.0.0.2", "127.0.0.2:8000"),
        ("::ffff:127.0.0.1", "[::ffff:127.0.0.1]:80"),
        ("10.1.2.3", "10.1.2.3:8000"),
    )
    for bind, host in binds:
        allowed = allowed_host_names(bind, "edge.example" if bind == "10.1.2.3" else "")
        assert allowed is not None
        assert _guarded(allowed).get("/", headers={"host": host}).status_code == 200, bind
        assert _guarded(allowed).get("/", headers={"host": "rebind.example"}).status_code == 421, bind
    assert allowed_host_names("0.0.0.0", "edge.example") == LOOPBACK_NAMES | {"edge.example"}


def test_a_listed_name_with_a_port_admits_that_name() -> None:
    """ALLOWED_HOSTS=edge.example:8443 (the name as a browser's address bar shows it) was kept with its port,
    and every request for that name, whose Host is compared without its port, got 421."""
    allowed = allowed_host_names("127.0.0.1", "Edge.Example:8443, [2001:db8::1]:443")
    assert allowed is not None and {"edge.example", "2001:db8::1"} <= allowed
    assert _guarded(allowed).get("/", headers={"host": "edge.example:8443"}).status_code == 200
