"""Ray at the edge: client actors, the driver actor, and the executor that connects them.

Client work runs on worker actors, each with an explicit CPU share and a (fractional) GPU
share; a worker loads the frozen backbone once and keeps its clients' shards for the whole run
(``runtime.num_workers`` workers; one per client when unset). The driver actor owns the global
prompt. Only prompts, counts and metrics cross process boundaries.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import ray
import torch

from rayfed.config import ConfigError, ExperimentConfig, RayConfig
from rayfed.data.partition import FederatedData, global_sets_of
from rayfed.runtime.driver import Driver
from rayfed.runtime.placement import by_worker, num_workers
from rayfed.runtime.worker import ClientWorker


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
    """Dispatches client work to worker actors; client ``i`` lives on actor ``i % len(actors)``
    (``rayfed.runtime.placement``), and each actor gets one call per phase for all its clients."""

    def __init__(self, actors: Sequence[Any]):
        self.actors = list(actors)

    def initial_prompt(self) -> torch.Tensor:
        return ray.get(self.actors[0].initial_prompt.remote())

    def each(self, method: str, args_by_client: dict[int, tuple]) -> dict[int, Any]:
        """``method(client_id, *args)`` for every client, all workers at once; gathered by id."""
        groups = by_worker(args_by_client.items(), len(self.actors))
        refs = [self.actors[w].each.remote(method, group) for w, group in enumerate(groups) if group]
        results: dict[int, Any] = {}
        for part in ray.get(refs):
            results.update(part)
        return dict(sorted(results.items()))

    def sharded(self, method: str, args: tuple) -> list[Any]:
        n = len(self.actors)
        refs = [getattr(a, method).remote(*args, i, n) for i, a in enumerate(self.actors)]
        return ray.get(refs)


class RemoteDriver:
    """Calls the driver actor's methods synchronously, so the orchestrator reads the same for
    the in-process and the Ray backend."""

    def __init__(self, handle: Any):
        self._handle = handle

    def __getattr__(self, name: str):
        method = getattr(self._handle, name)
        return lambda *args: ray.get(method.remote(*args))


def check_resources(cfg: ExperimentConfig, workers: int) -> None:
    """Fail fast, naming the keys, when the actors cannot all be placed at once: Ray would
    otherwise leave the last ones pending and the run would hang without an error."""
    r, total = cfg.runtime, ray.cluster_resources()
    need_cpu = workers * r.num_cpus_per_worker + r.num_cpus_driver
    need_gpu = workers * r.num_gpus_per_worker
    fewer = " or runtime.num_workers" if workers > 1 else ""
    if need_cpu > total.get("CPU", 0) + 1e-9:
        raise ConfigError(
            f"{workers} worker actors x runtime.num_cpus_per_worker ({r.num_cpus_per_worker}) + "
            f"runtime.num_cpus_driver ({r.num_cpus_driver}) = {need_cpu:g} CPUs, but the Ray cluster has "
            f"{total.get('CPU', 0):g}; lower runtime.num_cpus_per_worker (fractions are fine){fewer}")
    if need_gpu > total.get("GPU", 0) + 1e-9:
        raise ConfigError(
            f"{workers} worker actors x runtime.num_gpus_per_worker ({r.num_gpus_per_worker}) = "
            f"{need_gpu:g} GPUs, but the Ray cluster has {total.get('GPU', 0):g}; lower "
            f"runtime.num_gpus_per_worker{fewer}, or set it to 0 to run on CPUs")


def launch(cfg: ExperimentConfig, data: FederatedData) -> tuple[RemoteDriver, list[Any]]:
    """Start the worker actors (each with its clients' shards) and the driver actor; wait until
    all are ready."""
    r = cfg.runtime
    workers = num_workers(cfg)
    check_resources(cfg, workers)
    worker_actor = ray.remote(ClientWorker).options(num_cpus=r.num_cpus_per_worker, num_gpus=r.num_gpus_per_worker)
    global_sets = ray.put(global_sets_of(data))  # stored once, not once per actor
    shards = by_worker(((c.client_id, c) for c in data.clients), workers)
    actors = [worker_actor.remote(cfg, list(group.values()), global_sets, r.torch_threads) for group in shards]
    ray.get([a.ready.remote() for a in actors])  # surfaces load errors now, not mid-round
    driver = RemoteDriver(ray.remote(Driver).options(num_cpus=r.num_cpus_driver).remote(cfg, RayExecutor(actors)))
    driver.global_prompt()  # the driver actor is up too: start-up is not charged to the first round
    return driver, actors


def shutdown(actors: Sequence[Any], driver: RemoteDriver | None) -> None:
    """Free the actors' resources (their backbones) without stopping a shared Ray session."""
    for actor in actors:
        ray.kill(actor)
    if driver is not None:
        ray.kill(driver._handle)
