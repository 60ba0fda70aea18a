"""Requests whose ``Host`` names this service: a loopback-bound service answers loopback names only.

A service bound to 127.0.0.1 is out of the network's reach, but not out of a browser's: a web page can point
a name it controls at 127.0.0.1 (DNS rebinding) and then read the service's replies as its own origin's
(``/v1/info``, ``/metrics``, classifications, a cloud without a token's tails). Such requests carry the
page's name in ``Host``; a loopback-bound service refuses every name but its own loopback ones (421), unless
``ALLOWED_HOSTS`` names more (a reverse proxy that passes its public name on) or ``*``. A service bound to
another address answers any name unless ``ALLOWED_HOSTS`` says otherwise.
"""

from __future__ import annotations

import ipaddress
import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from service_core.problems import domain_problem
from service_core.raw_headers import header_value
from shared.errors import MisdirectedRequest

__all__ = ["LOOPBACK_NAMES", "HostGuard", "allowed_host_names", "host_name", "is_loopback"]

logger = logging.getLogger(__name__)

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
"""The names a loopback-bound service answers to without ``ALLOWED_HOSTS``."""


def is_loopback(address: str) -> bool:
    """Whether a bind address reaches this host only (``localhost``, 127.0.0.0/8, ::1)."""
    address = address.strip().lower().strip("[]")
    if address == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(address)
        return ip.is_loopback or (
            isinstance(ip, ipaddress.IPv6Address) and bool(ip.ipv4_mapped and ip.ipv4_mapped.is_loopback)
        )
    except ValueError:
        return False


def allowed_host_names(bind_host: str, allowed_hosts: str) -> frozenset[str] | None:
    """The ``Host`` names a service bound to ``bind_host`` answers (None: any) under ``ALLOWED_HOSTS``:
    empty (the default) for the loopback names when bound to loopback, any otherwise; ``*`` for any; else
    the names listed (comma-separated), and the loopback names too; the bind address itself in both cases."""
    # NOTE: a listed name is read as a Host value is (edge.example:8443 names edge.example, as its requests do)
    listed = {"*" if name.strip() == "*" else host_name(name) for name in allowed_hosts.split(",") if name.strip()}
    if "*" in listed:
        return None
    # NOTE: the bind address names this service too (127.0.0.2, a LAN address with ALLOWED_HOSTS set): only
    # a page served from that address itself sends it as Host, which is no rebinding
    own = {bind_host.strip().lower().strip("[]")} - {"", "0.0.0.0", "::"}
    if listed:
        return frozenset(listed) | LOOPBACK_NAMES | own
    return LOOPBACK_NAMES | own if is_loopback(bind_host) else None


def host_name(value: str) -> str:
    """The name of a ``Host`` header's value, lower-case, without its port or an IPv6 address's brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value[1:]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class HostGuard:
    """Answers 421 (problem+json) to an HTTP request whose ``Host`` is not one of ``allowed``; a request
    without one (HTTP/1.0) passes, as no browser sends such a request."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        self.app = app
        self.allowed = allowed
        self._refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            value = header_value(scope, b"host")
            if value is not None and host_name(value) not in self.allowed:
                await self._refuse(scope, receive, send, value)
                return
        await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, value: str) -> None:
        self._refused += 1
        if self._refused == 1 or self._refused % 1000 == 0:
            logger.warning(
                "refused %d request(s) for a Host this service does not answer (the last: %.100r); "
                "set ALLOWED_HOSTS if a proxy passes that name on",
                self._refused,
                value,
            )
        names = ", ".join(sorted(self.allowed))
        error = MisdirectedRequest(
            f"this service answers the Host names {names} (its ALLOWED_HOSTS setting), not {value[:100]!r}"
        )
        await domain_problem(error)(scope, receive, send)
