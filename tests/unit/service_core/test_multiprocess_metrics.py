"""Metrics of several processes added up on every scrape, and a dead process's totals kept
(:mod:`service_core.multiprocess_metrics`). Each "worker" is a real process: prometheus_client picks where
values live when it is first imported, from ``PROMETHEUS_MULTIPROC_DIR``."""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service_core.multiprocess_metrics import MULTIPROCESS_DIR_ENV, Retirements, collect
from shared.errors import ServiceUnavailable

_WORKER = """
import sys
from service_core.metrics import ServiceMetrics, metrics_response
metrics = ServiceMetrics("cloud")
print(metrics.multiprocess_dir)
metrics.set_info("resnet18", "none")
for _ in range(int(sys.argv[1])):
    metrics.requests.labels("/v1/tail", "POST", "200").inc()
    metrics.latency.labels("/v1/tail").observe(0.003)
if len(sys.argv) > 2:
    metrics.set_info("resnet18", "none", cut=sys.argv[2])
print(metrics_response(metrics).body.decode())
"""


def _worker(directory: Path | None, requests: int, *extra: str) -> tuple[int, str]:
    """Run one process that serves ``requests`` tails; its pid and what its /metrics would answer."""
    env = {k: v for k, v in os.environ.items() if k != MULTIPROCESS_DIR_ENV}
    if directory is not None:
        env[MULTIPROCESS_DIR_ENV] = str(directory)
    root = Path(__file__).resolve().parents[3]
    process = subprocess.Popen(
        [sys.executable, "-W", "error", "-c", _WORKER, str(requests), *extra],
        env=env | {"PYTHONPATH": str(root)},
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    return process.pid, out


def _sample(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name)}\{{[^}}]*{re.escape(labels)}[^}}]*\}} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name} {labels} not in:\n{text}"
    return float(match.group(1))


def test_a_scrape_adds_up_every_process_s_metrics(tmp_path: Path) -> None:
    _, first = _worker(tmp_path, 3)
    _, second = _worker(tmp_path, 4)
    assert first.splitlines()[0] == str(tmp_path)
    # NOTE: each process answers with everything in the directory so far, not only its own
    assert _sample(first, "splitinfer_requests_total", 'route="/v1/tail"') == 3
    assert _sample(second, "splitinfer_requests_total", 'route="/v1/tail"') == 7
    scraped = collect(tmp_path).decode()
    assert _sample(scraped, "splitinfer_requests_total", 'route="/v1/tail"') == 7
    assert _sample(scraped, "splitinfer_request_duration_seconds_count") == 7
    assert _sample(scraped, "splitinfer_info", 'model="resnet18"') == 1


def test_a_dead_process_s_totals_are_kept_in_a_bounded_number_of_files(tmp_path: Path) -> None:
    pids = [_worker(tmp_path, requests)[0] for requests in (3, 4, 5)]
    before = collect(tmp_path).decode()
    retirements = Retirements(tmp_path)
    for pid in pids:
        retirements.retire(pid)
    assert not retirements.pending
    after = collect(tmp_path).decode()
    for name, labels in [
        ("splitinfer_requests_total", 'route="/v1/tail"'),
        ("splitinfer_request_duration_seconds_count", ""),
        ("splitinfer_request_duration_seconds_sum", ""),
        ("splitinfer_request_duration_seconds_bucket", 'le="0.005"'),
    ]:
        assert _sample(after, name, labels) == _sample(before, name, labels), name
    assert _sample(after, "splitinfer_requests_total", 'route="/v1/tail"') == 12
    # NOTE: one file per kind of added-up metric, however many processes retired; their gauges are gone
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["counter_retired.db", "histogram_retired.db"]
    assert "splitinfer_info{" not in after


def test_retiring_one_process_leaves_the_others_files_alone(tmp_path: Path) -> None:
    first, _ = _worker(tmp_path, 3)
    second, _ = _worker(tmp_path, 4)
    Retirements(tmp_path).retire(first)
    assert {p.name for p in tmp_path.glob("*.db")} >= {f"counter_{second}.db", f"histogram_{second}.db"}
    assert not list(tmp_path.glob(f"*_{first}.db"))
    assert _sample(collect(tmp_path).decode(), "splitinfer_requests_total", 'route="/v1/tail"') == 7


def test_a_changed_info_leaves_no_stale_series_at_1(tmp_path: Path) -> None:
    _, out = _worker(tmp_path, 1, "layer3")
    assert _sample(out, "splitinfer_info", 'cut="layer3"') == 1
    assert _sample(out, "splitinfer_info", 'cut=""') == 0


def test_without_the_directory_a_process_answers_with_its_own_metrics(tmp_path: Path) -> None:
    _, out = _worker(None, 2)
    assert out.splitlines()[0] == "None"
    assert _sample(out, "splitinfer_requests_total", 'route="/v1/tail"') == 2
    assert not list(tmp_path.iterdir())


def _hold_lock(directory: Path, operation: int) -> int:
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, operation)
    return fd


def test_a_retirement_never_waits_for_scrapes(tmp_path: Path) -> None:
    """A scrape holding the lock (or stopped while holding it) must not stall the supervisor: the pid waits
    for a later retry, its files still counted once meanwhile."""
    pid, _ = _worker(tmp_path, 3)
    reading = _hold_lock(tmp_path, fcntl.LOCK_SH)
    retirements = Retirements(tmp_path)
    try:
        started = time.monotonic()
        retirements.retire(pid)
        assert time.monotonic() - started < 0.5
        assert retirements.pending == {pid}
        assert list(tmp_path.glob(f"*_{pid}.db"))
    finally:
        os.close(reading)
    retirements.retry()
    assert not retirements.pending and not list(tmp_path.glob(f"*_{pid}.db"))
    assert _sample(collect(tmp_path).decode(), "splitinfer_requests_total", 'route="/v1/tail"') == 3


def test_a_scrape_waits_for_a_retirement_at_most_its_bound(tmp_path: Path) -> None:
    _worker(tmp_path, 1)
    retiring = _hold_lock(tmp_path, fcntl.LOCK_EX)
    try:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable):
            collect(tmp_path, wait_s=0.2)
        assert time.monotonic() - started < 2
    finally:
        os.close(retiring)
    assert _sample(collect(tmp_path).decode(), "splitinfer_requests_total", 'route="/v1/tail"') == 1


@pytest.mark.parametrize("kind", ["missing", "a file", "read-only"])
def test_a_directory_that_cannot_hold_the_values_is_named_at_startup(tmp_path: Path, kind: str) -> None:
    """PROMETHEUS_MULTIPROC_DIR left set to a folder that is gone (a killed run's, removed since), or not a
    writable folder: the service said "no such file or folder: .../histogram_7728.db" (or a permission error on
    that file), naming neither the variable nor what to do."""
    directory = tmp_path / "metrics"
    if kind == "a file":
        directory.write_text("")
    elif kind == "read-only":
        directory.mkdir(mode=0o500)
        if os.access(directory, os.W_OK):
            pytest.skip("root writes to a read-only folder")
    env = {k: v for k, v in os.environ.items() if k != MULTIPROCESS_DIR_ENV}
    root = Path(__file__).resolve().parents[3]
    process = subprocess.run(
        [sys.executable, "-c", "from service_core.metrics import ServiceMetrics; ServiceMetrics('edge')"],
        env=env | {"PYTHONPATH": str(root), MULTIPROCESS_DIR_ENV: str(directory)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode != 0
    last = process.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: PROMETHEUS_MULTIPROC_DIR"), process.stderr
    assert str(directory) in last


def test_a_killed_run_s_files_are_retired_when_the_next_process_starts(tmp_path: Path) -> None:
    """A service started with PROMETHEUS_MULTIPROC_DIR left over from a run that was killed: the dead run's
    splitinfer_info series stayed at 1 next to the new one's (an edge reported cut layer1 and cut layer2 at
    once), for ever. The files of processes no longer running are folded when a process starts: their
    counters are kept, their gauges go."""
    _, _ = _worker(tmp_path, 3, "layer1")
    _, out = _worker(tmp_path, 4, "layer2")
    assert _sample(out, "splitinfer_info", 'cut="layer2"') == 1
    assert 'cut="layer1"' not in out
    assert _sample(out, "splitinfer_requests_total", 'route="/v1/tail"') == 7


def test_a_damaged_file_of_a_dead_process_is_dropped_not_fatal(tmp_path: Path) -> None:
    """A file no process can read (cut short: 4 bytes) under a dead process's name: the service must still start
    and answer its scrapes (before retiring dead processes' files, every scrape answered 500 with a traceback in
    the log; retiring it raised struct.error at startup)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f"counter_{dead.pid}.db").write_bytes(b"junk")
    _, out = _worker(tmp_path, 2)
    assert _sample(out, "splitinfer_requests_total", 'route="/v1/tail"') == 2
    assert not (tmp_path / f"counter_{dead.pid}.db").exists()


def test_hostile_files_in_the_folder_neither_stop_the_service_nor_its_scrapes(tmp_path: Path) -> None:
    """A file whose header says it holds more than it does (what prometheus_client reads as "file is corrupted":
    RuntimeError) under a dead process's name, or as the retired totals, and a file named for a pid no process
    can have: each stopped the service at startup (RuntimeError, OverflowError from os.kill), and a damaged
    retired-totals file failed every scrape. They are dropped with a warning; the service starts and counts."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lying = (1 << 20).to_bytes(4, "little") + bytes(12)  # NOTE: 'used' 1 MiB in a 16-byte file
    (tmp_path / f"counter_{dead.pid}.db").write_bytes(lying)
    (tmp_path / "histogram_retired.db").write_bytes(lying)
    (tmp_path / "counter_99999999999999999999.db").write_bytes(b"")
    _, out = _worker(tmp_path, 2)
    assert _sample(out, "splitinfer_requests_total", 'route="/v1/tail"') == 2
    assert _sample(out, "splitinfer_request_duration_seconds_count", 'route="/v1/tail"') == 2
    assert not (tmp_path / f"counter_{dead.pid}.db").exists()
    assert not (tmp_path / "counter_99999999999999999999.db").exists()


def test_a_damaged_file_of_a_live_process_is_left_out_of_scrapes(tmp_path: Path) -> None:
    """A file no scrape can read under the name of a process that is running (pid 1), which no retirement
    removes: every scrape failed (RuntimeError from prometheus_client, a 500). It is left out, with a warning."""
    (tmp_path / "counter_1.db").write_bytes((1 << 20).to_bytes(4, "little") + bytes(12))
    (tmp_path / "gauge_x.db").write_bytes(b"junk")
    _, out = _worker(tmp_path, 3)
    assert _sample(out, "splitinfer_requests_total", 'route="/v1/tail"') == 3
    assert _sample(out, "splitinfer_request_duration_seconds_count", 'route="/v1/tail"') == 3
