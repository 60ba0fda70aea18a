"""An async HTTP load generator: N concurrent clients for a duration or a request count, after a warm-up."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["LoadResult", "Outcome", "markdown_table", "percentile", "run_load"]

Outcome = tuple[int, int, int]
"""What one request reports: (HTTP status, bytes uploaded, bytes the edge sent on to the cloud)."""
Send = Callable[[httpx.AsyncClient, int], Awaitable[Outcome]]


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class LoadResult:
    name: str
    concurrency: int
    images_per_request: int = 1
    duration_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    upload_bytes: int = 0
    payload_bytes: int = 0

    def summary(self) -> dict[str, Any]:
        ok = len(self.latencies_ms)
        return {
            "name": self.name,
            "concurrency": self.concurrency,
            "requests": ok,
            "errors": sum(self.errors.values()),
            "error_kinds": dict(self.errors),
            "duration_s": round(self.duration_s, 3),
            "throughput_img_s": round(ok * self.images_per_request / self.duration_s, 3) if self.duration_s else 0.0,
            "p50_ms": round(percentile(self.latencies_ms, 50), 3),
            "p95_ms": round(percentile(self.latencies_ms, 95), 3),
            "p99_ms": round(percentile(self.latencies_ms, 99), 3),
            "mean_ms": round(statistics.fmean(self.latencies_ms), 3) if ok else float("nan"),
            "upload_bytes_per_request": round(self.upload_bytes / ok) if ok else 0,
            "payload_bytes_per_request": round(self.payload_bytes / ok) if ok else 0,
        }


async def run_load(
    send: Send,
    *,
    name: str,
    base_url: str,
    concurrency: int,
    duration_s: float | None = None,
    requests: int | None = None,
    warmup_s: float = 2.0,
    images_per_request: int = 1,
    timeout_s: float = 60.0,
    progress: bool = True,
) -> LoadResult:
    """Drive ``send`` from ``concurrency`` clients; stop after ``duration_s`` or ``requests`` (whichever is given)."""
    if (duration_s is None) == (requests is None):
        raise ValueError("give exactly one of duration_s and requests")
    result = LoadResult(name, concurrency, images_per_request)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits) as client:
        await _phase(client, send, concurrency, warmup_s, None, None)
        with Progress(
            TextColumn(f"[bold]{name}[/] c={concurrency}"),
            BarColumn(),
            TextColumn("{task.completed} requests"),
            TimeElapsedColumn(),
            disable=not progress,
            transient=True,
        ) as bar:
            task = bar.add_task(name, total=requests or None)
            started = time.perf_counter()
            await _phase(client, send, concurrency, duration_s, requests, result, lambda: bar.advance(task))
            result.duration_s = time.perf_counter() - started
    return result


async def _phase(
    client: httpx.AsyncClient,
    send: Send,
    concurrency: int,
    duration_s: float | None,
    requests: int | None,
    result: LoadResult | None,
    on_done: Callable[[], None] | None = None,
) -> None:
    if duration_s is not None and duration_s <= 0:
        return
    deadline = time.perf_counter() + duration_s if duration_s is not None else None
    issued = 0

    def claim() -> int | None:
        nonlocal issued
        if deadline is not None and time.perf_counter() >= deadline:
            return None
        if requests is not None and issued >= requests:
            return None
        issued += 1
        return issued - 1

    async def worker() -> None:
        while (index := claim()) is not None:
            started = time.perf_counter()
            try:
                status, uploaded, forwarded = await send(client, index)
            except httpx.HTTPError as exc:
                if result is not None:
                    result.errors[type(exc).__name__] += 1
                continue
            elapsed_ms = (time.perf_counter() - started) * 1000
            if result is None:
                continue
            if status == 200:
                result.latencies_ms.append(elapsed_ms)
                result.upload_bytes += uploaded
                result.payload_bytes += forwarded
            else:
                result.errors[str(status)] += 1
            if on_done is not None:
                on_done()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]] | None = None) -> str:
    columns = columns or [
        ("name", "run"),
        ("concurrency", "clients"),
        ("requests", "requests"),
        ("errors", "errors"),
        ("throughput_img_s", "img/s"),
        ("p50_ms", "p50 ms"),
        ("p95_ms", "p95 ms"),
        ("p99_ms", "p99 ms"),
        ("payload_bytes_per_request", "bytes to cloud"),
    ]
    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for key, _ in columns:
            value = row.get(key, "")
            if isinstance(value, float):
                cells.append(f"{value:.3f}" if abs(value) < 10 else f"{value:,.1f}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
