"""The container path for real: build the image, run docker-compose.yml, classify a photo, take the stack down.

Run with ``make test-compose`` (marker ``compose``; not part of ``make test``). It needs a Docker engine and
docker-compose; without them every test skips with the reason. ``BASE_IMAGE``, ``TORCH_INDEX`` and
``TORCH_CUDA`` in the environment become the build's arguments (see the Dockerfile); ``.ci/run`` sets them
from ``shared/tools/local-docker.sh``. The figures (image size, build and rebuild times, the drain) go to
``$SPLITINFER_COMPOSE_RESULTS`` when it is set. With ``SPLITINFER_COMPOSE_REQUIRED=1`` (CI, once its engine
started) a missing engine fails instead of skipping.
"""

from __future__ import annotations

import json
import os
import platform
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.compose, pytest.mark.timeout(3600)]

ROOT = Path(__file__).resolve().parents[2]
UID = 10001
BUILD_ARGS = ("BASE_IMAGE", "TORCH_INDEX", "TORCH_CUDA")
# What the build context leaves out anyway (.dockerignore); the rebuild copies the rest.
NOT_IN_CONTEXT = {".git", ".venv", "venv", "tests", "bench", "docs", ".ci", "build", "dist", ".whl", ".gl"}
NOT_IN_CONTEXT |= {".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis"}
LOCK_STEP = "RUN pip install --quiet --no-deps -r /opt/requirements.lock"
TORCH_STEP_MARK = 'pip install --quiet $index "torch==$TORCH_VERSION"'
CAT_CLASSES = range(281, 286)  # ImageNet's tabby, tiger cat, Persian, Siamese, Egyptian cat
START_TIMEOUT_S = 420


def _docker_cli() -> str | None:
    # NOTE: the Debian client: the classic builder (DOCKER_BUILDKIT=0) is what the engine here supports.
    preferred = os.environ.get("DOCKER", "/usr/bin/docker")
    return preferred if os.access(preferred, os.X_OK) else shutil.which("docker")


def _engine_problem() -> str | None:
    docker = _docker_cli()
    if docker is None:
        return "no docker client installed (run shared/tools/local-docker.sh start, or install Docker)"
    if shutil.which("docker-compose") is None:
        return "docker-compose (v1) is not installed"
    try:
        info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 30 s"
    if info.returncode != 0:
        return f"no Docker engine answers: {info.stderr.strip().splitlines()[-1:] or info.returncode}"
    return None


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "DOCKER_BUILDKIT": "0", "COMPOSE_DOCKER_CLI_BUILD": "0", **(extra or {})}


def _run(
    command: Sequence[str], *, timeout: float = 120, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(command), capture_output=True, text=True, timeout=timeout, env=env or _env(), cwd=ROOT, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _parse_time(stamp: str) -> datetime:
    """Docker's RFC 3339 timestamps carry nanoseconds; datetime takes microseconds."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", stamp)
    assert match is not None, stamp
    fraction = (match.group(2) or "0")[:6].ljust(6, "0")
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    return datetime.fromisoformat(f"{match.group(1)}.{fraction}{zone}")


def _steps_cached(output: str) -> dict[str, bool]:
    """Each step of a classic-builder log (its first line) and whether it came from the layer cache."""
    steps = re.split(r"^Step \d+/\d+ : ", output, flags=re.MULTILINE)
    return {step.splitlines()[0]: "Using cache" in step for step in steps[1:]}


def _step_cached(output: str, mark: str) -> bool:
    return any(hit for line, hit in _steps_cached(output).items() if mark in line)


@dataclass
class Build:
    docker: str
    image: str
    args: dict[str, str]
    seconds: float
    output: str
    results: dict[str, Any] = field(default_factory=dict)

    def build_command(self, context: Path, tag: str) -> list[str]:
        command = [self.docker, "build", "-t", tag]
        for name, value in self.args.items():
            command += ["--build-arg", f"{name}={value}"]
        return [*command, str(context)]


@dataclass
class Stack:
    build: Build
    project: str
    env: dict[str, str]
    edge_url: str
    token: str
    up_seconds: float

    def compose(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(["docker-compose", "-p", self.project, *args], timeout=timeout, env=self.env, check=check)

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.strip()

    def inspect(self, service: str) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(_run([self.build.docker, "inspect", self.container(service)]).stdout)
        return data[0]

    def exec_python(self, service: str, code: str) -> subprocess.CompletedProcess[str]:
        return self.compose("exec", "-T", service, "python", "-c", code, check=False)

    def logs(self, service: str) -> str:
        return _run([self.build.docker, "logs", "--timestamps", self.container(service)]).stderr


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Build]:
    problem = _engine_problem()
    if problem is not None:
        if os.environ.get("SPLITINFER_COMPOSE_REQUIRED") == "1":
            pytest.fail(f"SPLITINFER_COMPOSE_REQUIRED=1 but no container engine runs: {problem}")
        pytest.skip(f"no container engine can run here: {problem}")
    docker = _docker_cli()
    assert docker is not None
    args = {name: os.environ[name] for name in BUILD_ARGS if name in os.environ}
    image = f"splitinfer:compose-test-{secrets.token_hex(4)}"
    built = Build(docker=docker, image=image, args=args, seconds=0.0, output="")
    start = time.monotonic()
    result = _run(built.build_command(ROOT, image), timeout=2400, check=False)
    built.seconds = time.monotonic() - start
    built.output = result.stdout + result.stderr
    if result.returncode != 0:
        pytest.fail(f"docker build failed ({result.returncode}):\n{built.output[-4000:]}")
    built.results.update(
        {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "engine": _run([docker, "version", "--format", "{{.Server.Version}}"]).stdout.strip(),
            "compose": _run(["docker-compose", "version", "--short"]).stdout.strip(),
            "build_args": args,
            "first_build_s": round(built.seconds, 1),
            "first_build_torch_layer": "cached" if _step_cached(built.output, TORCH_STEP_MARK) else "installed",
        }
    )
    try:
        yield built
    finally:
        # --no-prune: the untagged parent layers are the classic builder's cache for the next run.
        _run([docker, "image", "rm", "--no-prune", image], check=False)
        target = os.environ.get("SPLITINFER_COMPOSE_RESULTS")
        if target and built.results:
            Path(target).write_text(json.dumps(built.results, indent=2) + "\n")


@pytest.fixture(scope="module")
def stack(build: Build) -> Iterator[Stack]:
    project = f"splitinfer-test-{secrets.token_hex(4)}"
    token = secrets.token_hex(16)
    port = _free_port()
    env = _env(
        {
            "SPLITINFER_IMAGE": build.image,
            "SPLITINFER_EDGE_PORT": str(port),
            "SPLITINFER_TOKEN": token,
            "SPLITINFER_EDGE_THREADS": "1",
        }
    )
    running = Stack(build, project, env, f"http://127.0.0.1:{port}", token, up_seconds=0.0)
    start = time.monotonic()
    try:
        # up -d returns once the cloud is healthy and the edge has started (depends_on: service_healthy).
        running.compose("up", "-d", "--no-build", timeout=START_TIMEOUT_S)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if httpx.get(f"{running.edge_url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                logs = running.compose("logs", "--no-color", "--tail", "40", check=False).stdout
                pytest.fail(f"the edge was not ready within {START_TIMEOUT_S} s:\n{logs}")
            time.sleep(1)
        running.up_seconds = time.monotonic() - start
        build.results["up_to_edge_ready_s"] = round(running.up_seconds, 1)
        yield running
    finally:
        running.compose("down", "-v", "--remove-orphans", "-t", "60", timeout=180, check=False)


def _image_config(build: Build) -> dict[str, Any]:
    data: list[dict[str, Any]] = json.loads(_run([build.docker, "image", "inspect", build.image]).stdout)
    return data[0]


def test_image_runs_as_a_fixed_numeric_uid_with_splitinfer_as_entrypoint(build: Build) -> None:
    config = _image_config(build)
    size = int(config["Size"])
    probe = "import torch; print(torch.__version__, torch.version.cuda or 'cpu')"
    version, cuda = _run(
        [build.docker, "run", "--rm", "--network", "none", "--entrypoint", "python", build.image, "-c", probe]
    ).stdout.split()
    build.results.update(
        {
            "image_bytes": size,
            "image_gb": round(size / 1e9, 2),
            "torch": version,
            "torch_build": "CPU"
            if cuda == "cpu"
            else f"CUDA {cuda} (built with TORCH_CUDA={build.args.get('TORCH_CUDA', 'forbid')})",
        }
    )
    if cuda == "cpu":
        assert size <= 1.5e9, f"a CPU image of {size / 1e9:.2f} GB"
    else:
        assert build.args.get("TORCH_CUDA") in ("allow", "require"), "a CUDA torch in an image built to forbid it"
    assert config["Config"]["User"] == f"{UID}:{UID}"
    assert config["Config"]["Entrypoint"] == ["splitinfer"]
    assert "SPLITINFER_HOST=0.0.0.0" in config["Config"]["Env"]
    result = _run([build.docker, "run", "--rm", "--network", "none", build.image, "cloud", "--help"])
    assert "usage: splitinfer cloud" in result.stdout


def test_services_run_non_root_with_a_writable_cache(stack: Stack) -> None:
    probe = (
        "import os, pathlib; d = pathlib.Path(os.environ['TORCH_HOME'], 'hub', 'checkpoints');"
        "d.mkdir(parents=True, exist_ok=True); f = d / '.write-probe'; f.write_text('ok'); f.unlink();"
        "print(os.getuid(), os.getgid(), d)"
    )
    for service in ("cloud", "edge"):
        result = stack.exec_python(service, probe)
        assert result.returncode == 0, result.stderr
        uid, gid, _ = result.stdout.split()
        assert (int(uid), int(gid)) == (UID, UID)
        assert "not writable" not in stack.logs(service)


def test_classifies_a_real_photo_through_the_edge(stack: Stack) -> None:
    from PIL import Image
    from skimage import data

    from splitinfer.samples import encode_image

    jpeg = encode_image(Image.fromarray(data.chelsea()))
    response = httpx.post(
        f"{stack.edge_url}/v1/classify", params={"top_k": 5}, files={"image": ("chelsea.jpg", jpeg)}, timeout=60
    )
    assert response.status_code == 200, response.text
    body = response.json()
    # NOTE: the compose file's default cut is `default`: the single-tensor cut nearest half of the FLOPs.
    assert (body["model"], body["codec"], body["completed_on"]) == ("resnet18", "fp16", "cloud")
    assert body["cut"] not in ("input", "output")
    top = [p["index"] for p in body["predictions"]]
    stack.build.results["weights"] = body["weights"]
    if body["weights"] == "random":
        # Offline: DEFAULT fell back to random weights (seed 0), loudly; the logs must blame the network,
        # not the cache, and the prediction must be the unsplit model's with those same weights.
        assert "could not be obtained" in stack.logs("cloud")
        import torch

        from shared.models import load_model
        from shared.preprocessing import decode_image

        loaded = load_model("resnet18", "none")
        with torch.no_grad():
            logits = loaded.module(loaded.preprocessor(decode_image(jpeg)).unsqueeze(0))
        assert top[0] == int(logits.argmax())
    else:
        assert top[0] in CAT_CLASSES, body["predictions"]


def test_edge_became_ready_only_after_the_cloud(stack: Stack) -> None:
    cloud_ready = [
        _parse_time(line.split()[0])
        for line in stack.logs("cloud").splitlines()
        if "Application startup complete" in line
    ]
    assert cloud_ready, "the cloud never logged its startup"
    edge = stack.inspect("edge")
    edge_started = _parse_time(edge["State"]["StartedAt"])
    assert edge_started > cloud_ready[0]
    assert stack.inspect("cloud")["State"]["Health"]["Status"] == "healthy"
    stack.build.results["edge_started_after_cloud_ready_s"] = round((edge_started - cloud_ready[0]).total_seconds(), 1)


def test_the_image_serves_with_the_bounded_http_parser(stack: Stack) -> None:
    """The image has httptools, which the services' framing bounds need: a request head over 64 KiB is a
    problem+json 431 (h11, the fallback, would answer 400 with uvicorn's own limit)."""
    host, port = stack.edge_url.removeprefix("http://").rsplit(":", 1)
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"p" * 100_000 + b"\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(head)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 431"), reply[:300]
    assert b"application/problem+json" in reply


def test_only_the_edge_is_published_on_loopback_and_the_cloud_needs_the_token(stack: Stack) -> None:
    ports = stack.inspect("edge")["NetworkSettings"]["Ports"]
    assert [(b["HostIp"], b["HostPort"]) for b in ports["8000/tcp"]] == [
        ("127.0.0.1", stack.env["SPLITINFER_EDGE_PORT"])
    ]
    assert not any(stack.inspect("cloud")["NetworkSettings"]["Ports"].values())
    call = (
        "import sys, urllib.request as u, urllib.error as e\n"
        "r = u.Request('http://cloud:8001/v1/info', headers=dict(a.split('=', 1) for a in sys.argv[1:]))\n"
        "try: print(u.urlopen(r, timeout=5).status)\n"
        "except e.HTTPError as x: print(x.code)\n"
    )
    without = stack.compose("exec", "-T", "edge", "python", "-c", call, check=False)
    with_token = stack.compose(
        "exec", "-T", "edge", "python", "-c", call, f"Authorization=Bearer {stack.token}", check=False
    )
    assert (without.stdout.strip(), with_token.stdout.strip()) == ("401", "200"), (without.stderr, with_token.stderr)


def test_an_unwritable_cache_is_named_in_the_log(build: Build) -> None:
    code = (
        "import logging; logging.basicConfig()\n"
        "from shared.models import load_model\n"
        "load_model('resnet18', 'DEFAULT', fallback_to_random=True)\n"
    )
    command = [build.docker, "run", "--rm", "--network", "none", "--user", "4321:4321", "--entrypoint", "python"]
    result = _run([*command, build.image, "-c", code], timeout=180)
    assert "is not writable by uid 4321" in result.stderr, result.stderr[-2000:]


def test_a_one_line_change_rebuilds_without_reinstalling_dependencies(build: Build, tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    for entry in ROOT.iterdir():
        if entry.name in NOT_IN_CONTEXT:
            continue
        if entry.is_dir():
            shutil.copytree(entry, context / entry.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(entry, context / entry.name)
    module = context / "splitinfer" / "__init__.py"
    module.write_text(module.read_text() + f"# rebuild probe {secrets.token_hex(4)}\n")
    tag = f"{build.image}-rebuild"
    start = time.monotonic()
    result = _run(build.build_command(context, tag), timeout=900)
    seconds = time.monotonic() - start
    _run([build.docker, "image", "rm", tag], check=False)  # its own code layers only
    cached = _steps_cached(result.stdout)
    build.results["rebuild_after_one_line_change_s"] = round(seconds, 1)
    build.results["rebuild_steps_cached"] = sum(cached.values())
    build.results["rebuild_steps"] = len(cached)
    assert [hit for line, hit in cached.items() if LOCK_STEP in line] == [True], "the dependency layer was rebuilt"
    assert [hit for line, hit in cached.items() if TORCH_STEP_MARK in line] == [True], "the torch layer was rebuilt"
    assert [hit for line, hit in cached.items() if line.startswith("COPY . ")] == [False], "the change was not copied"


def test_down_with_requests_in_flight_fails_none(stack: Stack) -> None:
    """`docker-compose down` while four clients keep the edge busy. The clients behave like a load balancer:
    they start no new request once /readyz stops answering 200 (the edge turns it 503 for SPLITINFER_DRAIN_S
    on SIGTERM, then stops accepting). Every request they did start must succeed."""
    from PIL import Image
    from skimage import data

    from splitinfer.samples import encode_image

    jpeg = encode_image(Image.fromarray(data.astronaut()))
    outcomes = {"ok": 0, "failed": 0, "ok_after_drain_began": 0}
    failures: list[str] = []
    lock = threading.Lock()
    draining = threading.Event()
    stop = threading.Event()

    def readiness() -> None:
        with httpx.Client(timeout=2) as http:
            while not stop.is_set():
                try:
                    ready = http.get(f"{stack.edge_url}/readyz").status_code == 200
                except httpx.HTTPError:
                    ready = False
                if not ready:
                    draining.set()
                    return
                time.sleep(0.1)

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            for _ in range(5000):
                if draining.is_set() or stop.is_set():
                    return
                try:
                    response = http.post(f"{stack.edge_url}/v1/classify", files={"image": ("a.jpg", jpeg)})
                except httpx.HTTPError as exc:
                    with lock:
                        outcomes["failed"] += 1
                        failures.append(repr(exc))
                    continue
                with lock:
                    if response.status_code == 200:
                        outcomes["ok"] += 1
                        outcomes["ok_after_drain_began"] += draining.is_set()
                    else:
                        outcomes["failed"] += 1
                        failures.append(f"{response.status_code} {response.text[:200]}")

    edge_id, cloud_id = stack.container("edge"), stack.container("cloud")
    waiter = subprocess.Popen(
        [stack.build.docker, "wait", edge_id, cloud_id], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    monitor = threading.Thread(target=readiness, daemon=True)
    for thread in [*threads, monitor]:
        thread.start()
    time.sleep(3)
    start = time.monotonic()
    down = stack.compose("down", timeout=240, check=False)  # the compose file's stop_grace_period
    down_seconds = time.monotonic() - start
    stop.set()
    for thread in [*threads, monitor]:
        thread.join(90)
    exit_codes = waiter.communicate(timeout=60)[0].split()
    stack.build.results["down"] = {**outcomes, "down_s": round(down_seconds, 1), "exit_codes": exit_codes}
    assert down.returncode == 0, down.stderr
    assert outcomes["failed"] == 0, failures[:5]
    assert outcomes["ok_after_drain_began"] > 0, "no request was in flight when the edge began to drain"
    assert exit_codes == ["0", "0"], "a service did not exit cleanly (137: killed after the grace period)"
