"""Leak hunt: end requests every way they can end, many times, then check that the services are whole.

    PYTHONPATH=. .venv/bin/python bench/leak_hunt.py [ROUNDS [MIXED_SECONDS [lite]]]

Starts a cloud and an edge (tests.fixture_models:tiny_cnn, cut block) with bounds set so that any leaked
reservation shows: the edge admits exactly one largest upload at once (MAX_BODY_BYTES_IN_FLIGHT =
MAX_UPLOAD_BYTES) and a decode budget of one byte (a request alone is always admitted, so anything still held
makes the next one 503; a mixed run keeps the default), the cloud the same for its payloads. After each way of
ending a request (ROUNDS times, default 200) it checks: a padded upload of the largest size gets 200,
MAX_CONCURRENT_REQUESTS slow uploads are all admitted together, the cloud admits a payload of its bound, and the
processes' open file descriptors, threads and RSS; it kills the cloud mid-request and starts it again. With
MIXED_SECONDS, honest and hostile clients run together that long instead, RSS sampled. With ``lite``, the edge
is edge_lite (the same split exported to ONNX). Prints one line per stage; exits 1 when a stage left the
service unwhole or a service logged a traceback.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from shared.protocol import encode_images
from shared.samples import encode_image, synthetic_image
from splitinfer.processes import Service, free_port, rss_kib, spawn, start_service, wait_until

TINY = ["--model", "tests.fixture_models:tiny_cnn", "--weights", "none"]
MAX_UPLOAD = 1024 * 1024
SLOTS = 4
JPEG = encode_image(synthetic_image(seed=5))
# NOTE: a JPEG followed by padding decodes as the JPEG: the largest upload the edge takes
PADDED = JPEG + b"\0" * (MAX_UPLOAD - len(JPEG))


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # NOTE: close = reset, fast
    return sock


def _head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _read_status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return 0
        data += chunk
    return int(data.split(b" ", 2)[1])


def raw(port: int, data: bytes, *, answer: bool = True, pause_s: float = 0.0) -> int:
    """Send ``data``; the status of the answer (0: closed without one), or -1 when not waited for."""
    with _connect(port) as sock:
        sock.sendall(data)
        if pause_s:
            time.sleep(pause_s)
        if not answer:
            return -1
        try:
            return _read_status(sock)
        except OSError:
            return 0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


class Hunt:
    def __init__(
        self,
        edge: Service,
        cloud: Service,
        cloud_payload: bytes,
        cloud_bound: int,
        restart_cloud: Callable[[], Service],
    ) -> None:
        self.edge, self.cloud = edge, cloud
        self.restart_cloud = restart_cloud
        self.payload, self.cloud_bound = cloud_payload, cloud_bound
        self.failed = False

    def whole(self) -> list[str]:
        problems = []
        for _ in range(3):  # NOTE: work abandoned by its client may still be finishing
            problems = self._check()
            if not problems:
                return []
            time.sleep(1)
        return problems

    def _check(self) -> list[str]:
        problems = []
        response = httpx.post(
            f"{self.edge.url}/v1/classify", content=PADDED, headers={"content-type": "image/jpeg"}, timeout=30
        )
        if response.status_code != 200:
            problems.append(f"edge largest upload: {response.status_code} {response.text[:200]}")
        # NOTE: SLOTS uploads held open together (each admitted at its head), then finished: each must be admitted
        socks = [_connect(self.edge.port) for _ in range(SLOTS)]
        try:
            head = _head("/v1/classify", {"content-type": "image/jpeg", "content-length": str(len(JPEG))})
            for sock in socks:
                sock.sendall(head + JPEG[:100])
            time.sleep(0.2)
            statuses = []
            for sock in socks:  # NOTE: one after the other: the decode budget of one byte admits one at once
                sock.sendall(JPEG[100:])
                statuses.append(_read_status(sock))
        finally:
            for sock in socks:
                sock.close()
        if statuses != [200] * SLOTS:
            problems.append(f"edge {SLOTS} slots: {statuses}")
        response = httpx.post(
            f"{self.cloud.url}/v1/tail", content=self.payload, headers={"content-type": "application/octet-stream"}
        )
        if response.status_code != 200:
            problems.append(f"cloud payload: {response.status_code} {response.text[:200]}")
        garbage = b"x" * self.cloud_bound
        response = httpx.post(
            f"{self.cloud.url}/v1/tail", content=garbage, headers={"content-type": "application/octet-stream"}
        )
        if response.status_code == 503:
            problems.append(f"cloud body bound: {response.status_code} {response.text[:200]}")
        info = httpx.get(f"{self.edge.url}/v1/info").json()
        if info.get("in_flight", 0) != 0:  # NOTE: edge_lite does not say
            problems.append(f"edge in_flight {info['in_flight']}")
        return problems

    def snapshot(self) -> dict[str, int]:
        out = {}
        for service in (self.edge, self.cloud):
            pid = service.process.pid
            out[f"{service.name}_fds"] = fds(pid)
            out[f"{service.name}_threads"] = threads(pid)
            out[f"{service.name}_rss"] = rss_kib(pid)
        return out

    def stage(self, name: str, rounds: int, action: Callable[[int], object], workers: int = 1) -> None:
        started = time.monotonic()
        results: dict[object, int] = {}
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for result in pool.map(action, range(rounds)):
                results[result] = results.get(result, 0) + 1
        self.report(name, started, results)

    def report(self, name: str, started: float, results: dict[object, int]) -> None:
        """One stage's line: its time and outcomes, and whether both services are whole after it."""
        problems = self.whole()
        self.failed |= bool(problems)
        print(
            f"{name:28s} {time.monotonic() - started:6.1f}s results={results} {self.snapshot()} "
            f"{'OK' if not problems else 'LEAK ' + '; '.join(problems)}",
            flush=True,
        )

    def cloud_killed(self, times: int) -> None:
        """The cloud killed (SIGKILL) while the edge sends it requests, then started again, ``times`` times."""
        started = time.monotonic()
        results: dict[object, int] = {}
        head = _head("/v1/classify", {"content-type": "image/jpeg", "content-length": str(len(JPEG))})
        for _ in range(times):
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                sent = [pool.submit(raw, self.edge.port, head + JPEG) for _ in range(40)]
                time.sleep(0.3)
                self.cloud.stop(signal.SIGKILL)
                for future in sent:
                    results[future.result()] = results.get(future.result(), 0) + 1
            self.cloud = self.restart_cloud()
            wait_until(self.cloud)
            wait_until(self.edge)
        self.report("cloud killed mid-request", started, results)

    def mixed(self, seconds: float, hostile: list[Callable[[int], object]]) -> None:
        """Honest clients (two) and a hostile one together for ``seconds``, both services' RSS sampled."""
        deadline = time.monotonic() + seconds
        head = _head("/v1/classify", {"content-type": "image/jpeg", "content-length": str(len(JPEG))})
        counts: dict[str, int] = {"hostile": 0}

        def honest() -> None:
            while time.monotonic() < deadline:
                status = f"honest {raw(self.edge.port, head + JPEG)}"
                counts[status] = counts.get(status, 0) + 1

        def attacker() -> None:
            i = 0
            while time.monotonic() < deadline:
                hostile[i % len(hostile)](i)
                i += 1
                counts["hostile"] += 1

        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            running = [pool.submit(honest), pool.submit(honest), pool.submit(attacker)]
            while not all(f.done() for f in running):
                print(f"mixed t={seconds - (deadline - time.monotonic()):5.0f}s {counts} {self.snapshot()}", flush=True)
                time.sleep(min(15.0, max(0.1, deadline - time.monotonic())))
            for future in running:
                future.result()
        problems = self.whole()
        self.failed |= bool(problems)
        print(f"mixed done {counts} {self.snapshot()} {'OK' if not problems else 'LEAK ' + '; '.join(problems)}")


def _start_edge_lite(cloud: Service, logs: Path, env: dict[str, str]) -> Service:
    """The torch-free edge (edge_lite) with the same split (tiny_cnn at cut block, exported to ONNX)."""
    from shared.models import load_model
    from shared.onnx_export import export_split
    from shared.splitting import ModelGraph

    loaded = load_model("tests.fixture_models:tiny_cnn", "none")
    graph = ModelGraph(loaded.module, loaded.input_shape)
    export = logs / "export"
    export_split(
        graph, "block", model=loaded.name, weights=loaded.digest, preprocessing=loaded.preprocessor.to_json()
    ).write(export)
    port = free_port()
    command = [sys.executable, "-m", "edge_lite", "--onnx-dir", str(export), "--cloud-url", cloud.url]
    command += ["--port", str(port), "--codec", "fp32"]
    log = logs / f"edge-lite-{port}.log"
    return Service("edge-lite", port, spawn(command, log=log, env={"OMP_NUM_THREADS": "1", **env}), log, command)


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    mixed_s = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    lite = len(sys.argv) > 3 and sys.argv[3] == "lite"
    logs = Path(tempfile.mkdtemp(prefix="leak-hunt-"))
    # NOTE: a mixed run keeps the default decode budgets, so that honest requests are answered
    budget = {} if mixed_s else {"SPLITINFER_MAX_DECODED_BYTES_IN_FLIGHT": "1"}
    cloud_env = {
        **budget,
        "SPLITINFER_BODY_TIMEOUT_S": "1",
        "SPLITINFER_MAX_BATCH_SIZE": "2",
        "SPLITINFER_MAX_QUEUE": "8",
    }
    cloud = start_service("cloud", TINY, logs, env=cloud_env)
    services = [cloud]
    try:
        wait_until(cloud)
        info = httpx.get(f"{cloud.url}/v1/info").json()
        bound = info["max_payload_bytes"]
        cloud.stop(signal.SIGTERM)
        cloud = start_service(
            "cloud", TINY, logs, port=cloud.port, env={**cloud_env, "SPLITINFER_MAX_BODY_BYTES_IN_FLIGHT": str(bound)}
        )
        services = [cloud]
        edge_env = {
            "SPLITINFER_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
            "SPLITINFER_MAX_BODY_BYTES_IN_FLIGHT": str(MAX_UPLOAD),
            **budget,
            "SPLITINFER_MAX_CONCURRENT_REQUESTS": str(SLOTS),
            "SPLITINFER_BODY_TIMEOUT_S": "1",
            "SPLITINFER_BREAKER_RESET_S": "1",
        }
        if lite:
            edge = _start_edge_lite(cloud, logs, edge_env)
        else:
            edge = start_service("edge", [*TINY, "--cut", "block", "--cloud-url", cloud.url], logs, env=edge_env)
        services.append(edge)
        wait_until(cloud)
        wait_until(edge)
        payload = encode_images([JPEG], [], None, model=info["model"], weights=info["weights_digest"], codec="image")  # type: ignore[arg-type]

        def restart_cloud() -> Service:
            started = start_service("cloud", TINY, logs, port=cloud.port, env=cloud_env)
            services.append(started)
            return started

        cloud_env["SPLITINFER_MAX_BODY_BYTES_IN_FLIGHT"] = str(bound)
        hunt = Hunt(edge, cloud, payload, bound, restart_cloud)
        if mixed_s:
            run_mixed(hunt, mixed_s)
        else:
            run_stages(hunt, rounds)
        for service in services:
            tracebacks = service.output().count("Traceback")
            print(f"{service.name}: {tracebacks} tracebacks in its log", flush=True)
            hunt.failed |= tracebacks > 0
        return 1 if hunt.failed else 0
    finally:
        for service in services:
            service.stop(signal.SIGKILL)
        print(f"logs in {logs}")


def run_stages(hunt: Hunt, rounds: int) -> None:
    e, c = hunt.edge.port, hunt.cloud.port
    jpeg_head = _head("/v1/classify", {"content-type": "image/jpeg", "content-length": str(len(JPEG))})
    big_head = _head("/v1/classify", {"content-type": "image/jpeg", "content-length": str(MAX_UPLOAD)})
    chunked = _head("/v1/classify", {"content-type": "image/jpeg", "transfer-encoding": "chunked"})
    tail_head = _head(
        "/v1/tail", {"content-type": "application/octet-stream", "content-length": str(len(hunt.payload))}
    )
    tail_big = _head("/v1/tail", {"content-type": "application/octet-stream", "content-length": str(hunt.cloud_bound)})
    tail_chunked = _head("/v1/tail", {"content-type": "application/octet-stream", "transfer-encoding": "chunked"})
    block = b"\0" * 200_000
    chunk = f"{len(block):x}\r\n".encode() + block + b"\r\n"

    hunt.stage("warm-up", 20, lambda i: raw(e, jpeg_head + JPEG))
    print("baseline", hunt.snapshot(), flush=True)
    hunt.stage("edge ok", rounds, lambda i: raw(e, jpeg_head + JPEG), workers=2)
    hunt.stage(
        "edge 415",
        rounds,
        lambda i: raw(e, _head("/v1/classify", {"content-type": "text/plain", "content-length": "3"}) + b"abc"),
    )
    hunt.stage(
        "edge 422 undecodable",
        rounds,
        lambda i: raw(e, _head("/v1/classify", {"content-type": "image/jpeg", "content-length": "3"}) + b"abc"),
    )
    hunt.stage(
        "edge 413 declared",
        rounds,
        lambda i: raw(e, _head("/v1/classify", {"content-type": "image/jpeg", "content-length": str(MAX_UPLOAD + 1)})),
    )
    hunt.stage("edge 413 chunked", rounds // 4, lambda i: raw(e, chunked + chunk * 6 + b"0\r\n\r\n"))
    hunt.stage(
        "edge 422 bad cut",
        rounds,
        lambda i: raw(
            e, _head("/v1/classify?cut=nope", {"content-type": "image/jpeg", "content-length": str(len(JPEG))}) + JPEG
        ),
    )
    hunt.stage(
        "edge 400 length",
        rounds,
        lambda i: raw(e, _head("/v1/classify", {"content-type": "image/jpeg", "content-length": "1x"})),
    )
    hunt.stage(
        "edge close in head",
        rounds,
        lambda i: raw(e, b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Le", answer=False),
    )
    hunt.stage("edge close mid-body", rounds, lambda i: raw(e, big_head + block, answer=False, pause_s=0.02), workers=2)
    hunt.stage(
        "edge close mid-chunked", rounds, lambda i: raw(e, chunked + chunk * 2, answer=False, pause_s=0.02), workers=2
    )
    hunt.stage("edge close after body", rounds, lambda i: raw(e, jpeg_head + JPEG, answer=False), workers=2)
    hunt.stage(
        "edge close after body+",
        rounds,
        lambda i: raw(e, jpeg_head + JPEG, answer=False, pause_s=0.005 * (i % 10)),
        workers=2,
    )
    hunt.stage("edge 408 body timeout", max(8, rounds // 10), lambda i: raw(e, big_head + block), workers=4)
    hunt.stage("edge 408 chunked timeout", max(8, rounds // 10), lambda i: raw(e, chunked + chunk), workers=4)
    hunt.stage("edge 503 over slots", max(8, rounds // 10), lambda i: raw(e, big_head + block[:1000]), workers=8)
    hunt.stage(
        "edge pipelined+close", rounds, lambda i: raw(e, (jpeg_head + JPEG) * 3, answer=False, pause_s=0.01), workers=2
    )
    hunt.stage("cloud ok", rounds, lambda i: raw(c, tail_head + hunt.payload), workers=2)
    hunt.stage(
        "cloud 400 garbage",
        rounds,
        lambda i: raw(
            c, _head("/v1/tail", {"content-type": "application/octet-stream", "content-length": "5"}) + b"hello"
        ),
    )
    hunt.stage(
        "cloud 415",
        rounds,
        lambda i: raw(c, _head("/v1/tail", {"content-type": "text/plain", "content-length": "5"}) + b"hello"),
    )
    hunt.stage(
        "cloud close mid-body", rounds, lambda i: raw(c, tail_big + block, answer=False, pause_s=0.02), workers=2
    )
    hunt.stage(
        "cloud close mid-chunked",
        rounds,
        lambda i: raw(c, tail_chunked + chunk * 2, answer=False, pause_s=0.02),
        workers=2,
    )
    hunt.stage("cloud close after body", rounds, lambda i: raw(c, tail_head + hunt.payload, answer=False), workers=4)
    hunt.stage("cloud 408 body timeout", max(8, rounds // 10), lambda i: raw(c, tail_big + block), workers=4)
    hunt.cloud_killed(max(3, rounds // 40))
    hunt.stage("edge ok again", rounds, lambda i: raw(e, jpeg_head + JPEG), workers=2)


def run_mixed(hunt: Hunt, seconds: float) -> None:
    e = hunt.edge.port
    big_head = _head("/v1/classify", {"content-type": "image/jpeg", "content-length": str(MAX_UPLOAD)})
    jpeg_head = _head("/v1/classify", {"content-type": "image/jpeg", "content-length": str(len(JPEG))})
    block = b"\0" * 200_000
    hostile: list[Callable[[int], object]] = [
        lambda i: raw(e, big_head + block, answer=False, pause_s=0.02),
        lambda i: raw(e, jpeg_head + JPEG, answer=False),
        lambda i: raw(e, (jpeg_head + JPEG) * 3, answer=False, pause_s=0.01),
        lambda i: raw(e, _head("/v1/classify", {"content-type": "image/jpeg", "content-length": "3"}) + b"abc"),
        lambda i: raw(e, b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Le", answer=False),
    ]
    hunt.stage("warm-up", 200, lambda i: raw(e, jpeg_head + JPEG))
    hunt.mixed(seconds, hostile)


if __name__ == "__main__":
    sys.exit(main())
