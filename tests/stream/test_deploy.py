"""The deployment files under ``deploy/`` parse and agree with each other and with the code: Ray
Serve configs pass Serve's schema and build the pool application, the KubeRay RayService serves
the GPU config, the front ends' command is a valid ``avsentry serve`` command, and the
Kubernetes Envoy config is deploy/envoy.yaml with its front ends found through DNS (and passes
``envoy --mode validate``). No Kubernetes cluster runs here: what a cluster would check beyond
this (the KubeRay CRD's own schema, scheduling) is not tested."""

from __future__ import annotations

import copy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import yaml
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import DeploymentSchema, ServeDeploySchema

from avsentry.cli import build_parser
from avsentry.stream.commands import serve_overrides
from avsentry.stream.config import load_config
from avsentry.stream.pool import DEFAULTS, build
from avsentry.stream.server import SERVICE_NAME

sys.path.insert(0, str(Path(__file__).parent))
from test_envoy import ENVOY  # noqa: E402

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _docs(path: Path) -> dict[str, dict]:
    """The YAML documents of a manifest, by ``Kind/name``; each has the fields every object needs."""
    out = {}
    for doc in yaml.safe_load_all(path.read_text()):
        assert {"apiVersion", "kind", "metadata"} <= set(doc), (path, doc.keys())
        out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


@pytest.mark.parametrize("name", ["ray-serve.yaml", "ray-serve-gpu.yaml"])
def test_the_serve_configs_pass_serves_schema_and_build_the_pool(name: str) -> None:
    data = yaml.safe_load((DEPLOY / name).read_text())
    schema = ServeDeploySchema.model_validate(data)
    (app,) = schema.applications
    assert app.name == "avsentry" and app.import_path == "avsentry.stream.pool:build"
    assert set(app.args) <= set(DEFAULTS)
    build(app.args)  # the args are ones the builder takes
    (deployment,) = app.deployments
    assert deployment.name == "InferencePool"
    # the schema lets unknown keys through: a misspelt option would be ignored, so check them
    (raw,) = data["applications"][0]["deployments"]
    assert set(raw) <= set(DeploymentSchema.model_fields), set(raw) - set(DeploymentSchema.model_fields)
    autoscaling = AutoscalingConfig.model_validate(raw["autoscaling_config"])
    assert set(raw["autoscaling_config"]) <= set(AutoscalingConfig.model_fields)
    assert 1 <= autoscaling.min_replicas <= autoscaling.max_replicas
    broken = copy.deepcopy(data)
    broken["applications"][0]["deployments"][0]["max_ongoing_requests"] = "many"
    with pytest.raises(ValueError):  # the check can fail
        ServeDeploySchema.model_validate(broken)
    with pytest.raises(ValueError, match="unknown pool arguments"):
        build({**app.args, "replica_count": 2})


def test_the_rayservice_serves_the_gpu_config_on_gpu_workers() -> None:
    docs = _docs(DEPLOY / "k8s" / "rayservice.yaml")
    svc = docs["RayService/avsentry-pool"]
    assert svc["apiVersion"] == "ray.io/v1"
    serve_config = yaml.safe_load(svc["spec"]["serveConfigV2"])
    assert serve_config == yaml.safe_load((DEPLOY / "ray-serve-gpu.yaml").read_text())
    ServeDeploySchema.model_validate(serve_config)
    cluster = svc["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__  # the Ray the project installs and tests
    actor = serve_config["applications"][0]["deployments"][0]["ray_actor_options"]
    (gpu,) = cluster["workerGroupSpecs"]
    (container,) = gpu["template"]["spec"]["containers"]
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == actor["num_gpus"]
    assert int(gpu["rayStartParams"]["num-gpus"]) == actor["num_gpus"]
    assert int(gpu["rayStartParams"]["num-cpus"]) >= actor["num_cpus"]
    assert float(container["resources"]["limits"]["cpu"]) >= float(gpu["rayStartParams"]["num-cpus"])
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no replica on the head


def test_the_front_end_deployment_runs_a_valid_serve_command() -> None:
    docs = _docs(DEPLOY / "k8s" / "frontend.yaml")
    deployment, service = docs["Deployment/avsentry-frontend"], docs["Service/avsentry-frontend"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert service["spec"]["selector"] == labels
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    script = " ".join(container["args"])
    ray_start, _, serve = script.partition("&&")
    assert "ray start" in ray_start and "--num-cpus=0" in ray_start  # joins the pool, hosts no replica
    argv = shlex.split(serve)
    assert argv[:2] == ["exec", "avsentry"]
    args = build_parser().parse_args(argv[2:])
    config = load_config(args.config, **serve_overrides(args))
    assert (config.inference, config.ray_address) == ("ray", "auto")
    (port,) = container["ports"]
    assert port["containerPort"] == config.port == service["spec"]["ports"][0]["port"]
    assert container["readinessProbe"]["grpc"] == {"port": config.port, "service": SERVICE_NAME}
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > config.grace_s  # Kubernetes waits for the drain before it kills


def test_the_kubernetes_envoy_is_deploy_envoy_with_dns_front_ends(tmp_path) -> None:
    docs = _docs(DEPLOY / "k8s" / "envoy.yaml")
    text = docs["ConfigMap/avsentry-envoy"]["data"]["envoy.yaml"]
    k8s = yaml.safe_load(text)
    local = yaml.safe_load((DEPLOY / "envoy.yaml").read_text())
    cluster = k8s["static_resources"]["clusters"][0]
    assert cluster["type"] == "STRICT_DNS"
    (endpoints,) = cluster["load_assignment"]["endpoints"]
    (host,) = endpoints["lb_endpoints"]
    address = host["endpoint"]["address"]["socket_address"]
    frontend = _docs(DEPLOY / "k8s" / "frontend.yaml")["Service/avsentry-frontend"]
    assert address["address"].startswith(f"{frontend['metadata']['name']}.")
    assert address["port_value"] == frontend["spec"]["ports"][0]["port"]
    # but for where the front ends are and where it listens, it is deploy/envoy.yaml
    for config in (k8s, local):
        c = config["static_resources"]["clusters"][0]
        for key in ("type", "dns_lookup_family", "load_assignment"):
            c.pop(key, None)
        config["static_resources"]["listeners"][0].pop("address")
    assert k8s == local
    (tmp_path / "envoy.yaml").write_text(text)
    checked = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(tmp_path / "envoy.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-2000:]
    envoy = docs["Deployment/avsentry-envoy"]["spec"]["template"]["spec"]
    assert envoy["volumes"][0]["configMap"]["name"] == "avsentry-envoy"
    assert (
        docs["Service/avsentry"]["spec"]["selector"]
        == docs["Deployment/avsentry-envoy"]["spec"]["selector"]["matchLabels"]
    )
