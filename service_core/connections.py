"""How many client connections a service process holds, and the file descriptors that takes.

Each open connection costs a file descriptor and memory. ``MAX_CONNECTIONS`` bounds them in two tiers
(enforced by ``splitinfer.http_protocol``):

- a request that arrives while more than ``MAX_CONNECTIONS`` connections are open (its own included) gets
  a problem+json 503 with ``Retry-After``, and its connection is closed (uvicorn's ``limit_concurrency``,
  with the services' own answer), lingering: what the client still sends is read and dropped for up to 2 s
  (``splitinfer.http_protocol.lingering.LINGER_S``) so that it reads the 503 instead of a reset, and meanwhile the
  connection still counts;
- a connection opened while :func:`connection_ceiling` connections are open already (``MAX_CONNECTIONS``
  and an eighth more, at least 8, room for those 503s) is closed at once, unanswered: however fast
  connections come, the process holds at most that many.

The ceiling and :data:`RESERVED_FDS` must fit in the process's ``RLIMIT_NOFILE``: the default
``MAX_CONNECTIONS`` is 1024 or less to fit, and a larger one is refused at startup. The services first
raise their soft limit toward what the default needs, as far as the hard limit allows
(:func:`raise_open_files_limit`): soft limits are often far below the hard ones (1024 under systemd, 256
on macOS), and under 256 the default would be a single connection. A default lowered all the same is
said in a warning at startup (:func:`lowered_default_warning`).
"""

from __future__ import annotations

import contextlib
import resource

from prometheus_client import CollectorRegistry, Counter

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "RESERVED_FDS",
    "check_max_connections",
    "connection_ceiling",
    "connections_refused_counter",
    "default_max_connections",
    "lowered_default_warning",
    "open_files_limit",
    "raise_open_files_limit",
]

DEFAULT_MAX_CONNECTIONS = 1024
RESERVED_FDS = 320
"""File descriptors kept for everything but client connections: the edge's pool to the cloud (256), the
listening sockets, model, weights, log and library files."""


def connection_ceiling(max_connections: int) -> int:
    """The most connections open at once: ``max_connections`` and an eighth more (at least 8), which are
    answered 503; beyond it a new connection is closed unanswered."""
    return max_connections + max(8, max_connections // 8)


def open_files_limit() -> int | None:
    """The process's soft ``RLIMIT_NOFILE`` (``ulimit -n``), or None when it is unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def default_max_connections(open_files: int | None) -> int:
    """:data:`DEFAULT_MAX_CONNECTIONS`, or less so that its ceiling fits in ``open_files`` (at least 1)."""
    if open_files is None:
        return DEFAULT_MAX_CONNECTIONS
    room = open_files - RESERVED_FDS
    best = min(DEFAULT_MAX_CONNECTIONS, max(1, room * 8 // 9))  # NOTE: the ceiling is about 9/8 of it
    while best < DEFAULT_MAX_CONNECTIONS and connection_ceiling(best + 1) <= room:
        best += 1
    while best > 1 and connection_ceiling(best) > room:
        best -= 1
    return best


def check_max_connections(max_connections: int, open_files: int | None) -> None:
    """``ValueError`` (saying what to change) unless ``max_connections`` fits in ``open_files``."""
    if open_files is None:
        return
    needed = connection_ceiling(max_connections) + RESERVED_FDS
    if needed > open_files:
        fitting = default_max_connections(open_files)
        advice = (
            f"raise that limit or lower MAX_CONNECTIONS to {fitting}"
            if connection_ceiling(fitting) + RESERVED_FDS <= open_files
            else f"raise that limit to {connection_ceiling(1) + RESERVED_FDS} at least (no MAX_CONNECTIONS fits)"
        )
        raise ValueError(
            f"MAX_CONNECTIONS {max_connections} needs up to {needed} file descriptors "
            f"({connection_ceiling(max_connections)} connections and {RESERVED_FDS} for everything else); "
            f"this process may open {open_files} (ulimit -n): {advice}"
        )


def raise_open_files_limit() -> int | None:
    """Raise this process's soft ``RLIMIT_NOFILE`` toward what the default ``MAX_CONNECTIONS`` needs, no
    further than the hard limit (servers do this at startup; Go's runtime does it for every program); the
    soft limit afterwards, or None when it is unlimited. Child processes (``--workers``) inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connection_ceiling(DEFAULT_MAX_CONNECTIONS) + RESERVED_FDS
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        # NOTE: a sandbox may refuse; the default then fits the old limit, and startup warns of it
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return open_files_limit()


def lowered_default_warning(max_connections: int, explicit: bool, open_files: int | None) -> str | None:
    """What to tell the operator when the default ``MAX_CONNECTIONS`` had to be lowered to fit
    ``open_files``, or None (the full default, or a value they chose)."""
    if explicit or max_connections >= DEFAULT_MAX_CONNECTIONS:
        return None
    needed = connection_ceiling(DEFAULT_MAX_CONNECTIONS) + RESERVED_FDS
    fits = open_files is None or connection_ceiling(max_connections) + RESERVED_FDS <= open_files
    return (
        f"MAX_CONNECTIONS is {max_connections}, not {DEFAULT_MAX_CONNECTIONS}: this process may open {open_files} "
        f"file descriptors (ulimit -n, its hard limit too) and {RESERVED_FDS} are kept for everything but client "
        f"connections; open connections beyond {max_connections} (idle ones too) get 503. Raise ulimit -n to "
        f"{needed} for the default" + (", or set MAX_CONNECTIONS to say this is meant" if fits else "")
    )


def connections_refused_counter(registry: CollectorRegistry) -> Counter:
    """``splitinfer_connections_refused{how}``, which :func:`splitinfer.serve.run_service` finds as
    ``app.state.metrics.connections_refused`` and counts the HTTP protocol's refusals in."""
    return Counter(
        "splitinfer_connections_refused",
        "Client connections refused at MAX_CONNECTIONS: a request answered 503 ('answered'), or a connection "
        "closed before any request ('closed'). Neither reaches splitinfer_requests.",
        ["how"],
        registry=registry,
    )
