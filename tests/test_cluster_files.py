"""The shipped cluster files parse, follow Ray's schemas, keep the dashboard on 127.0.0.1 with
token authentication, and run rayfed commands whose config keys exist."""

import json
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from rayfed.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"


def rayfed_overrides(command: str) -> tuple[str, list[str]]:
    """The config and key=value overrides of a ``rayfed run CONFIG ...`` command line."""
    words = shlex.split(command)
    i = words.index("run")
    return words[i + 1], [w for w in words[i + 2:] if "=" in w]


def test_the_cluster_launcher_file_follows_rays_schema():
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    launcher = yaml.safe_load((CLUSTER / "launcher-gpu.yaml").read_text())
    jsonschema.validate(launcher, schema)
    head = " ".join(launcher["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "RAY_AUTH_MODE=token" in head
    assert all("RAY_AUTH_MODE=token" in c for c in launcher["worker_start_ray_commands"] if "ray start" in c)
    # The token reaches every node: the user's own token file is mounted on head and workers alike.
    assert launcher["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"
    assert "ray get-auth-token --generate" in (CLUSTER / "launcher-gpu.yaml").read_text()
    gpu = launcher["available_node_types"]["gpu_worker"]["resources"]
    assert gpu["GPU"] >= 1


def test_the_rayjob_runs_a_valid_rayfed_command_with_the_dashboard_on_loopback_and_tokens():
    job = yaml.safe_load((CLUSTER / "kuberay-rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    config, overrides = rayfed_overrides(job["spec"]["entrypoint"])
    cfg = load_config(ROOT / config, overrides)  # every key exists and every value validates
    spec = job["spec"]["rayClusterSpec"]
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            env = {e["name"]: e for e in container["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token"
            assert "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]  # never a literal token
    gpus = sum(g["replicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
               for g in spec["workerGroupSpecs"])
    assert cfg.runtime.num_workers * cfg.runtime.num_gpus_per_worker <= gpus  # the workers fit the GPUs


def test_the_runtime_env_is_one_ray_accepts():
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    RuntimeEnv(**env)  # raises on unknown or malformed fields
    assert ".venv/" in env["excludes"] and "outputs/" in env["excludes"]


@pytest.mark.parametrize("path", sorted(p.name for p in CLUSTER.glob("*.yaml")))
def test_no_cluster_file_holds_a_secret(path):
    text = (CLUSTER / path).read_text().lower()
    assert "wandb_api_key:" not in text and "ray_auth_token: " not in text


def test_every_cluster_file_runs_the_ray_the_project_is_tested_with():
    """One Ray version everywhere: the RayJob's rayVersion is the one constraints.txt pins."""
    import re

    pinned = re.search(r"^ray\[?[^=\n]*==([0-9.]+)", (CLUSTER.parent / "constraints.txt").read_text(), re.M)
    assert pinned, "constraints.txt pins ray"
    rayjob = next(yaml.safe_load_all((CLUSTER / "kuberay-rayjob.yaml").read_text()))
    assert rayjob["spec"]["rayClusterSpec"]["rayVersion"] == pinned.group(1)
