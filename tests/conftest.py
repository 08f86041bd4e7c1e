"""Shared fixtures: a tiny config, and one local Ray session for every test marked ``ray``."""

from __future__ import annotations

import os
from pathlib import Path

# Before anything imports Ray, which reads these once: with a token file from an earlier Ray
# session in ~/.ray, a cluster started without RAY_AUTH_MODE=token fails (the README's test
# command, typed in a shell that does not set it).
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# The shared test cluster opens no metrics port (as a rayfed run does): the port test
# (tests/test_security.py) then sees what a run opens, not the ports this cluster already holds.
# The names are rayfed.runtime.ray_backend.METRICS_PORTS, spelled out: that module imports Ray.
for _server in ("AUTOSCALER_METRIC_PORT", "DASHBOARD_METRIC_PORT"):
    os.environ.setdefault(_server, "-1")

import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

from rayfed.config import ExperimentConfig, load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# Tiny-model, synthetic-data settings small enough for a unit test (seconds on 2 cores).
TINY = [
    "model.name=tiny-llama", "model.num_virtual_tokens=4", "model.prompt_init=random",
    "data.source=synthetic", "data.max_examples_per_task=24", "data.max_source_tokens=64",
    "data.max_target_tokens=16", "partition.num_clients=4", "partition.train_examples=16",
    "partition.val_examples=0", "partition.test_examples=4", "partition.global_test_examples=16",
    "partition.global_val_examples=0",
    "algorithm.rounds=2", "algorithm.clients_per_round=4", "algorithm.local_steps=4",
    "algorithm.batch_size=8", "algorithm.client_optimizer.name=adam",
    "algorithm.client_optimizer.lr=0.05", "eval.batch_size=16", "eval.max_new_tokens=8",
    "runtime.num_cpus_per_worker=0.25",
]


@pytest.fixture(scope="session")
def tiny_overrides() -> list[str]:
    """The tiny settings as ``key=value`` strings (for module-scoped fixtures)."""
    return list(TINY)


@pytest.fixture
def tiny_config(tmp_path):
    """``tiny_config(*overrides)`` -> a validated tiny ExperimentConfig writing into tmp_path."""

    def make(*overrides: str) -> ExperimentConfig:
        return load_config(None, [*TINY, f"output_dir={tmp_path / 'out'}", *overrides])

    return make


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray cluster for the whole test session: 2 CPUs and one faked GPU, so
    fractional-GPU actors schedule on a CPU machine (where they then stop: no CUDA)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False)
    yield ray
    ray.shutdown()


# A meta-path finder that makes torch, Ray and the model stack unimportable in a subprocess.
BLOCK_HEAVY = ("import sys\n"
               "class Block:\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] in ('torch', 'ray', 'transformers', 'peft'):\n"
               "            raise ImportError(f'{name} is blocked in this test')\n"
               "sys.meta_path.insert(0, Block())\n")


def rayfed_without_torch_or_ray(*args: str) -> subprocess.CompletedProcess:
    """``rayfed ARGS`` in a process where torch and Ray cannot be imported."""
    code = BLOCK_HEAVY + f"from rayfed.cli import main\nsys.exit(main({list(args)!r}))\n"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)


@pytest.fixture
def plot_without_torch_or_ray():
    """``plot(PATH)``: ``rayfed plot PATH`` in a process where torch and Ray cannot be imported; the
    PNGs it printed."""

    def plot(path: Path) -> list[str]:
        done = rayfed_without_torch_or_ray("plot", str(path))
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    return plot


@pytest.fixture
def without_torch_or_ray():
    """``run(*args)``: ``rayfed ARGS`` in a process where torch and Ray cannot be imported."""
    return rayfed_without_torch_or_ray
