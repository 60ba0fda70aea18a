"""The Ray Serve deployment is configured from the same arguments as the cloud (no cluster needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("ray.serve", reason="the ray extra is not installed (pip install -e '.[ray]')")

import yaml
from ray.serve.schema import ServeDeploySchema

from cloud_service.serve import DEPLOYMENT_NAME, build_app, deployment_options
from cloud_service.settings import CloudSettings

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[3]


def test_a_fixed_replica_count() -> None:
    options = deployment_options({"num_replicas": 2, "num_cpus": 0.5, "model": "resnet18"}, max_queue=512)
    assert options == {
        "name": DEPLOYMENT_NAME,
        "max_queued_requests": 512,
        "num_replicas": 2,
        "ray_actor_options": {"num_cpus": 0.5, "num_gpus": 0.0},
    }


def test_autoscaling_and_gpus() -> None:
    args = {
        "min_replicas": 1,
        "max_replicas": 8,
        "target_ongoing_requests": 16,
        "num_gpus": 1,
        "max_ongoing_requests": 64,
    }
    options = deployment_options(args, max_queue=512)
    assert options["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 16.0}
    assert options["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert options["max_ongoing_requests"] == 64 and "num_replicas" not in options


def test_fixed_and_autoscaling_together_are_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        deployment_options({"num_replicas": 2, "max_replicas": 4}, max_queue=512)


@pytest.mark.parametrize(("args", "bound"), [({}, 512), ({"max_queue": 7}, 7)])
def test_the_clouds_queue_bound_is_the_bound_on_requests_waiting_in_the_ray_proxy(
    args: dict[str, int], bound: int
) -> None:
    # NOTE: Ray's default queues without bound, and its proxy holds a waiting request's whole body: measured,
    # 500 MiB of one chunked body in the proxy while five slow uploads held the replica's slots.
    app = build_app({"model": "resnet18", "weights": "none", **args})
    assert app._bound_deployment.max_queued_requests == bound


def test_cloud_settings_are_validated_where_the_app_is_built() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        build_app({"model": "resnet18", "max_batch_size": 0})


def test_the_committed_cluster_config_is_a_valid_serve_config() -> None:
    config = ServeDeploySchema(**yaml.safe_load((ROOT / "deploy/ray-serve.yaml").read_text()))
    application = config.applications[0]
    assert application.import_path == "cloud_service.serve:build_app"
    options = deployment_options(application.args, max_queue=512)
    assert options["autoscaling_config"]["max_replicas"] == 8 and options["ray_actor_options"]["num_gpus"] == 1


def test_the_committed_cluster_config_bounds_how_long_the_ray_proxy_holds_a_request() -> None:
    # NOTE: Ray's proxy has no timeout of its own by default: a request held there (its body buffered) waits as
    # long as its client keeps the connection. Longer than the cloud's body timeout, so that 408 is the cloud's.
    config = ServeDeploySchema(**yaml.safe_load((ROOT / "deploy/ray-serve.yaml").read_text()))
    assert config.http_options.request_timeout_s is not None
    assert config.http_options.request_timeout_s > CloudSettings.model_fields["body_timeout_s"].default
