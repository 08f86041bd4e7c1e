"""Ray at the edge: client actors, the driver actor, and the executor that connects them.

Each client is an actor with an explicit CPU share and a (fractional) GPU share; it loads the
frozen backbone once and keeps its shard for the whole run. The driver actor owns the global
prompt. Only prompts, counts and metrics cross process boundaries.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import ray
import torch

from rayfed.config import ConfigError, ExperimentConfig, RayConfig
from rayfed.data.partition import FederatedData
from rayfed.runtime.driver import Driver
from rayfed.runtime.worker import ClientWorker
from rayfed.types import ClientUpdate, EvalSums


def start_ray(cfg: RayConfig) -> None:
    """Connect to ``cfg.address`` or ``$RAY_ADDRESS`` (e.g. under ``ray job submit``), else start
    a local cluster. Does nothing if Ray is already initialised (tests, Tune trials)."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        ray.init(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, include_dashboard=cfg.include_dashboard)


class RayExecutor:
    """Dispatches client work to actors; client ``i`` lives on actor ``i``."""

    def __init__(self, actors: Sequence[Any]):
        self.actors = list(actors)

    def initial_prompt(self) -> torch.Tensor:
        return ray.get(self.actors[0].initial_prompt.remote())

    def fit(self, client_ids: Sequence[int], prompt: torch.Tensor, round_idx: int) -> list[ClientUpdate]:
        ref = ray.put(prompt)
        return ray.get([self.actors[cid].fit.remote(cid, ref, round_idx) for cid in client_ids])

    def evaluate_global(self, prompt: torch.Tensor) -> EvalSums:
        ref, n = ray.put(prompt), len(self.actors)
        parts = ray.get([a.evaluate_global.remote(ref, i, n) for i, a in enumerate(self.actors)])
        return sum(parts, EvalSums())

    def evaluate_local(self, client_ids: Sequence[int], prompt: torch.Tensor) -> dict[int, EvalSums]:
        ref = ray.put(prompt)
        return self._each("evaluate_local", {cid: ref for cid in client_ids})

    def personalize(self, client_ids: Sequence[int], prompt: torch.Tensor) -> dict[int, tuple[torch.Tensor, float]]:
        ref = ray.put(prompt)
        return self._each("personalize", {cid: ref for cid in client_ids})

    def evaluate_personalized(self, prompts: dict[int, torch.Tensor]) -> dict[int, tuple[EvalSums, EvalSums]]:
        return self._each("evaluate_personalized", prompts)

    def _each(self, method: str, arg_by_client: dict[int, Any]) -> dict[int, Any]:
        """Call ``method(client_id, arg)`` on every client's actor at once; gather by client id."""
        ids = sorted(arg_by_client)
        refs = [getattr(self.actors[cid], method).remote(cid, arg_by_client[cid]) for cid in ids]
        return dict(zip(ids, ray.get(refs)))


class RemoteDriver:
    """Calls the driver actor's methods synchronously, so the orchestrator reads the same for
    the in-process and the Ray backend."""

    def __init__(self, handle: Any):
        self._handle = handle

    def __getattr__(self, name: str):
        method = getattr(self._handle, name)
        return lambda *args: ray.get(method.remote(*args))


def check_resources(cfg: ExperimentConfig, num_clients: int) -> None:
    """Fail fast, naming the keys, when the actors cannot all be placed at once: Ray would
    otherwise leave the last ones pending and the run would hang without an error."""
    r, total = cfg.runtime, ray.cluster_resources()
    need_cpu = num_clients * r.num_cpus_per_client + r.num_cpus_driver
    need_gpu = num_clients * r.num_gpus_per_client
    if need_cpu > total.get("CPU", 0) + 1e-9:
        raise ConfigError(
            f"{num_clients} client actors x runtime.num_cpus_per_client ({r.num_cpus_per_client}) + "
            f"runtime.num_cpus_driver ({r.num_cpus_driver}) = {need_cpu:g} CPUs, but the Ray cluster has "
            f"{total.get('CPU', 0):g}; lower runtime.num_cpus_per_client (fractions are fine)")
    if need_gpu > total.get("GPU", 0) + 1e-9:
        raise ConfigError(
            f"{num_clients} client actors x runtime.num_gpus_per_client ({r.num_gpus_per_client}) = "
            f"{need_gpu:g} GPUs, but the Ray cluster has {total.get('GPU', 0):g}; lower "
            f"runtime.num_gpus_per_client or set it to 0 to run on CPUs")


def launch(cfg: ExperimentConfig, data: FederatedData) -> tuple[RemoteDriver, list[Any]]:
    """Start one client actor per client and the driver actor; wait until all are ready."""
    r = cfg.runtime
    check_resources(cfg, len(data.clients))
    client_actor = ray.remote(ClientWorker).options(num_cpus=r.num_cpus_per_client, num_gpus=r.num_gpus_per_client)
    global_test = ray.put(list(data.global_test))  # stored once, not once per actor
    actors = [client_actor.remote(cfg, [shard], global_test, r.torch_threads) for shard in data.clients]
    ray.get([a.ready.remote() for a in actors])  # surfaces load errors now, not mid-round
    driver = ray.remote(Driver).options(num_cpus=r.num_cpus_driver).remote(cfg, RayExecutor(actors))
    return RemoteDriver(driver), actors


def shutdown(actors: Sequence[Any], driver: RemoteDriver | None) -> None:
    """Free the actors' resources (their backbones) without stopping a shared Ray session."""
    for actor in actors:
        ray.kill(actor)
    if driver is not None:
        ray.kill(driver._handle)
