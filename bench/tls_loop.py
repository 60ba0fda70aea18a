"""What serving TLS on asyncio's event loop costs (docs/benchmarks.md, "TLS and the event loop").

    PYTHONPATH=. .venv/bin/python bench/tls_loop.py              # about 3 minutes on 2 cores
    PYTHONPATH=. .venv/bin/python bench/tls_loop.py --quick      # a smoke run (writes nothing)

A service given a certificate starts TLS itself on each accepted connection
(:mod:`splitinfer.http_protocol.tls_handshake`), which needs a loop that honours ``pause_reading()`` in
``connection_made``: uvloop 0.23 does not, so such a service runs on asyncio's loop
(:func:`splitinfer.serve.uvicorn_config`), whose TLS layer is Python (uvloop's is compiled). The same cloud
(resnet18, random weights, one torch thread, the ``avgpool`` fp32 payload: its tail is one linear layer, so
the HTTP and TLS path is most of a request's cost) is served four ways, and ``wrk -t1 -c32 -d8s`` POSTs to
each over kept-alive connections (handshakes are 32 of some thousands of requests), in alternating rounds
(forward, then backward):

- HTTPS on asyncio: ``splitinfer cloud --ssl-certfile --ssl-keyfile``, as served now;
- HTTP on uvloop: ``splitinfer cloud``, as served now;
- HTTP on asyncio: the same, its loop set to asyncio's (the loop's share of the TLS figure);
- HTTPS on uvloop, uvicorn's own TLS: the server given the certificate, not the protocol (how TLS was served
  before the handshake was counted; its handshakes are uncounted and last up to 60 s).

The last two are served by this script (``--serve``), building the cloud as ``splitinfer cloud`` does and
handing :func:`splitinfer.serve.run_service` the loop (and the certificate) to use.

Writes bench/results/tls_loop.json and its table into docs/benchmarks.md (between the ``tls_loop`` markers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.certificates import self_signed_certificate
from bench.doc_section import write_section
from bench.wrk import load_average, wrk_post

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "tls_loop.json"
_CLOUD_ARGS = ["--model", "resnet18", "--weights", "none", "--threads", "1"]
_HTTPS_ASYNCIO = "HTTPS, asyncio loop (served now)"
_HTTP_UVLOOP = "HTTP, uvloop (served now)"
_HTTP_ASYNCIO = "HTTP, asyncio loop"
_HTTPS_UVLOOP = "HTTPS, uvloop, uvicorn's own TLS (before)"


@dataclass
class _Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _start(name: str, command: list[str], scheme: str, logs: Path) -> _Server:
    from splitinfer.processes import free_port, spawn

    port = free_port()
    log = logs / f"{port}.log"
    process = spawn(
        [*command, "--host", "127.0.0.1", "--port", str(port), *_CLOUD_ARGS],
        log=log,
        env={"SPLITINFER_THREADS": "1"},
        cwd=ROOT,
    )
    return _Server(name, f"{scheme}://127.0.0.1:{port}", process, log)


def _wait_ready(server: _Server, cert: Path, timeout_s: float = 180) -> None:
    verify = ssl.create_default_context(cafile=str(cert))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited ({server.process.returncode}):\n{server.log.read_text()}")
        try:
            if httpx.get(server.url + "/readyz", verify=verify, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{server.name} was not ready in {timeout_s:.0f} s:\n{server.log.read_text()}")


def _uvloop_in(pid: int) -> bool:
    """Whether uvloop's extension is loaded in the process (it is not where the loop is asyncio's)."""
    return "uvloop/loop." in Path(f"/proc/{pid}/maps").read_text()


def _payload() -> tuple[bytes, str]:
    from shared.models import load_model
    from shared.wire import MEDIA_TYPE
    from splitinfer.bench import cloud_payloads
    from splitinfer.samples import encode_image, synthetic_image

    loaded = load_model("resnet18", "none")
    return cloud_payloads(loaded, "avgpool", "fp32", [encode_image(synthetic_image())])[0], MEDIA_TYPE


def measure(scratch: Path, rounds: int, duration_s: int) -> dict[str, Any]:
    cert, key = self_signed_certificate(scratch)
    tls = ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
    cli = [sys.executable, "-m", "splitinfer", "cloud"]
    this = [sys.executable, "-m", "bench.tls_loop", "--serve"]
    logs = scratch / "logs"
    logs.mkdir()
    servers = [
        _start(_HTTPS_ASYNCIO, [*cli, *tls], "https", logs),
        _start(_HTTP_UVLOOP, cli, "http", logs),
        _start(_HTTP_ASYNCIO, [*this, "asyncio"], "http", logs),
        _start(_HTTPS_UVLOOP, [*this, "uvloop", *tls], "https", logs),
    ]
    body, media_type = _payload()
    samples: dict[str, list[dict[str, Any]]] = {server.name: [] for server in servers}
    try:
        for server in servers:
            _wait_ready(server, cert)
        uvloop = {server.name: _uvloop_in(server.process.pid) for server in servers}
        expected = {_HTTPS_ASYNCIO: False, _HTTP_UVLOOP: True, _HTTP_ASYNCIO: False, _HTTPS_UVLOOP: True}
        if uvloop != expected:  # NOTE: a server on another loop than its name says would mislabel the table
            raise RuntimeError(f"uvloop loaded in the servers: {uvloop}, expected {expected}")
        for server in servers:  # NOTE: warm-up, not recorded
            wrk_post(server.url + "/v1/tail", body, media_type, scratch, 2)
        for round_index in range(rounds):
            order = servers if round_index % 2 == 0 else servers[::-1]
            for server in order:
                run = wrk_post(server.url + "/v1/tail", body, media_type, scratch, duration_s, server.process.pid)
                samples[server.name].append(run | {"load": load_average()})
                print(f"  round {round_index + 1} {server.name:44s} {run['requests_s']:9.1f} req/s", flush=True)
    finally:
        for server in servers:
            server.stop()
    rates = {name: statistics.median(run["requests_s"] for run in runs) for name, runs in samples.items()}
    cpu = {name: statistics.median(run["server_cpu_ms_per_request"] for run in runs) for name, runs in samples.items()}
    return {
        "load_generator": f"wrk -t1 -c32 -d{duration_s}s --latency, POST, kept-alive connections",
        "service": "splitinfer cloud " + " ".join(_CLOUD_ARGS),
        "payload": f"resnet18 avgpool fp32, {len(body)} bytes",
        "certificate": "self-signed RSA 2048 (openssl req -x509)",
        "rounds": rounds,
        "uvloop_loaded": uvloop,
        "runs": samples,
        "median_requests_s": rates,
        "median_server_cpu_ms_per_request": cpu,
        "https_asyncio_vs_http_uvloop": round(rates[_HTTPS_ASYNCIO] / rates[_HTTP_UVLOOP], 3),
        "http_asyncio_vs_http_uvloop": round(rates[_HTTP_ASYNCIO] / rates[_HTTP_UVLOOP], 3),
        "https_asyncio_vs_https_uvloop": round(rates[_HTTPS_ASYNCIO] / rates[_HTTPS_UVLOOP], 3),
    }


def markdown(results: dict[str, Any]) -> str:
    m = results["measured"]
    lines = [
        f"Measured {results['date']} on {results['machine']['processor']} ({results['machine']['cores']} cores, "
        f"shared with other work: load average {results['load_before']} before, {results['load_after']} after), "
        f"`{m['service']}`, {m['payload']}, `{m['load_generator']}`, {m['rounds']} alternating rounds (median):",
        "",
        "| server | requests/s | runs | server CPU ms / request | cores: server, wrk |",
        "|---|---:|---|---:|---|",
    ]
    for name, rate in m["median_requests_s"].items():
        runs = m["runs"][name]
        listed = ", ".join(f"{run['requests_s']:.0f}" for run in runs)
        cores = statistics.median(run["server_cores"] for run in runs)
        wrk = statistics.median(run["wrk_cores"] for run in runs)
        cpu = m["median_server_cpu_ms_per_request"][name]
        lines.append(f"| {name} | {rate:,.0f} | {listed} | {cpu:.3f} | {cores:.2f}, {wrk:.2f} |")
    lines += [
        "",
        f"HTTPS on asyncio / HTTP on uvloop: **{m['https_asyncio_vs_http_uvloop']:.2f}x**; HTTP on asyncio / "
        f"HTTP on uvloop: {m['http_asyncio_vs_http_uvloop']:.2f}x; HTTPS on asyncio / HTTPS on uvloop (uvicorn's "
        f"TLS): **{m['https_asyncio_vs_https_uvloop']:.2f}x**.",
    ]
    return "\n".join(lines)


def _serve(loop: str, argv: list[str]) -> None:
    """``splitinfer cloud ARGV`` on ``loop``; with ``--ssl-certfile``, TLS is uvicorn's (the server's), not the
    protocol's."""
    from cloud_service.app import create_app
    from cloud_service.settings import CloudSettings
    from service_core.connections import raise_open_files_limit
    from splitinfer.cli import build_parser
    from splitinfer.serve import run_service
    from splitinfer.settings_flags import settings_from_args

    raise_open_files_limit()
    settings = settings_from_args(CloudSettings, build_parser("cloud").parse_args(["cloud", *argv]))
    options: dict[str, Any] = {"loop": loop}
    if settings.ssl_certfile is not None:
        options |= {"ssl_certfile": settings.ssl_certfile, "ssl_keyfile": settings.ssl_keyfile}
        settings = settings.model_copy(update={"ssl_certfile": None, "ssl_keyfile": None})
    run_service(create_app(settings), settings, **options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: short, one round, nothing written")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--serve", choices=["asyncio", "uvloop"], help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.serve is not None:
        _serve(args.serve, rest)
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    for tool in ("wrk", "openssl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench/tls_loop.py needs {tool} (apt-get install {tool})")
    rounds, duration_s = (1, 2) if args.quick else (3, 8)
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"processor": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "load_before": load_average(),
    }
    with tempfile.TemporaryDirectory() as directory:
        results["measured"] = measure(Path(directory), rounds, duration_s)
    results["load_after"] = load_average()
    if not args.quick:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
        write_section("tls_loop", "tls_loop.py", markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
