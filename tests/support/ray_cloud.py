"""A local Ray Serve cloud for tests and benchmarks: ``serve run`` on the committed cluster config.

Needs the ``ray`` extra. The config is deploy/ray-serve.yaml with this machine's values: the proxy on a
free loopback port (its other HTTP options, the timeouts, as committed), CPU, and each application's
arguments as given.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from splitinfer.processes import free_port, spawn

__all__ = ["RayCloud", "serve_config", "start_ray_cloud", "stop_ray_cloud"]

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_CONFIG = ROOT / "deploy/ray-serve.yaml"


@dataclass
class RayCloud:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def app_url(self, route_prefix: str = "/") -> str:
        return self.url + route_prefix.rstrip("/")

    def instances(self, polls: int = 1, route_prefix: str = "/") -> set[str]:
        """The replicas (host:pid) that answered ``polls`` calls of /v1/info."""
        return {httpx.get(f"{self.app_url(route_prefix)}/v1/info", timeout=10).json()["instance"] for _ in range(polls)}


def serve_config(port: int, applications: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The committed cluster config for one machine: ``applications`` maps route prefixes to arguments."""
    config: dict[str, Any] = yaml.safe_load(CLUSTER_CONFIG.read_text())
    config["http_options"] = {**config.get("http_options", {}), "host": "127.0.0.1", "port": port}
    config["proxy_location"] = "HeadOnly"
    template = config["applications"][0]
    config["applications"] = [
        {
            **template,
            "name": f"splitinfer-cloud{prefix.replace('/', '-').rstrip('-')}",
            "route_prefix": prefix,
            "args": dict(args),
        }
        for prefix, args in applications.items()
    ]
    return config


def start_ray_cloud(work: Path, applications: Mapping[str, Mapping[str, Any]], timeout_s: float = 300) -> RayCloud:
    """``serve run`` the applications; return once each answers /readyz from all its replicas."""
    port = free_port()
    config = work / f"serve-{port}.yaml"
    config.write_text(yaml.safe_dump(serve_config(port, applications)))
    log = work / f"serve-{port}.log"
    serve = str(Path(sys.executable).with_name("serve"))
    process = spawn([serve, "run", str(config)], log=log, env={"RAY_USAGE_STATS_ENABLED": "0"}, cwd=ROOT)
    cloud = RayCloud(f"http://127.0.0.1:{port}", process, log)
    pending = dict(applications)
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve run exited with {process.returncode}:\n{log.read_text()[-5000:]}")
        for prefix, args in list(pending.items()):
            try:
                ready = httpx.get(f"{cloud.app_url(prefix)}/readyz", timeout=5).status_code == 200
                if ready and len(cloud.instances(4 * int(args.get("num_replicas", 1)), prefix)) == int(
                    args.get("num_replicas", 1)
                ):
                    del pending[prefix]
            except (httpx.TransportError, ValueError, KeyError):
                pass
        time.sleep(1)
    if pending:
        stop_ray_cloud(cloud)
        raise TimeoutError(f"Ray Serve applications {sorted(pending)} never became ready:\n{log.read_text()[-5000:]}")
    return cloud


def stop_ray_cloud(cloud: RayCloud) -> None:
    """SIGINT: ``serve run`` shuts Serve and the local Ray instance it started down (in about 6 s; its
    process group is killed after 20: once in a fresh clone's run it had not exited after 60)."""
    if cloud.process.poll() is None:
        os.killpg(cloud.process.pid, signal.SIGINT)
        try:
            cloud.process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(cloud.process.pid, signal.SIGKILL)
            cloud.process.wait()
