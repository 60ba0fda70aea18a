"""One ``wrk`` run POSTing a fixed body, with the CPU the server spent on it (bench/overhead.py,
bench/tls_loop.py)."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import time
from pathlib import Path
from typing import Any

__all__ = ["cpu_seconds", "load_average", "wrk_post"]

_LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "{media_type}"
local f = io.open("{path}", "rb")
wrk.body = f:read("*a")
f:close()
"""
_RATE = re.compile(r"Requests/sec:\s+([0-9.]+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+([0-9]+)")
_SOCKET_ERRORS = re.compile(r"Socket errors:(.*)")


def load_average() -> list[float]:
    """The machine's 1, 5 and 15 minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a process and its descendants (Linux ``/proc``)."""
    ticks = os.sysconf("SC_CLK_TCK")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / ticks
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            total += cpu_seconds(int(child))
    return total


def wrk_post(
    url: str, body: bytes, media_type: str, scratch: Path, duration_s: int, server_pid: int | None = None
) -> dict[str, Any]:
    """One ``wrk -t1 -c32`` run (http or https ``url``); with ``server_pid``, also the CPU the server (its
    process tree) and wrk used."""
    payload = scratch / f"body-{abs(hash(body))}.bin"
    payload.write_bytes(body)
    script = scratch / f"post-{abs(hash((body, media_type)))}.lua"
    script.write_text(_LUA.format(media_type=media_type, path=payload))
    command = ["wrk", "-t1", "-c32", f"-d{duration_s}s", "--latency", "-s", str(script), url]
    server_before = cpu_seconds(server_pid) if server_pid is not None else 0.0
    wrk_before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=duration_s + 60).stdout
    wall = time.perf_counter() - started
    wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_cpu = cpu_seconds(server_pid) - server_before if server_pid is not None else 0.0
    wrk_cpu = wrk_after.ru_utime + wrk_after.ru_stime - wrk_before.ru_utime - wrk_before.ru_stime
    rate = _RATE.search(output)
    if rate is None:
        raise RuntimeError(f"wrk printed no rate:\n{output}")
    non_2xx = _NON_2XX.search(output)
    socket_errors = _SOCKET_ERRORS.search(output)
    requests = float(rate.group(1)) * duration_s
    return {
        "requests_s": float(rate.group(1)),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": socket_errors.group(1).strip() if socket_errors else "",
        **(
            {
                "server_cores": round(server_cpu / wall, 3),
                "server_cpu_ms_per_request": round(server_cpu / requests * 1000, 4),
                "wrk_cores": round(wrk_cpu / wall, 3),
            }
            if server_pid is not None
            else {}
        ),
    }
