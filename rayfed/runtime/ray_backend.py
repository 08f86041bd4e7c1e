"""Ray at the edge: client actors, the driver actor, and the executor that connects them.

Client work runs on worker actors, each with an explicit CPU share and a (fractional) GPU
share; a worker loads the frozen backbone once and keeps its clients' shards for the whole run
(``runtime.num_workers`` workers; one per client when unset). The driver actor owns the global
prompt. Only prompts, counts and metrics cross process boundaries.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
import torch

from rayfed.config import ConfigError, ExperimentConfig, RayConfig
from rayfed.data.partition import FederatedData, global_sets_of
from rayfed.errors import (
    UnauthenticatedRayWarning,
    WorkerLostError,
    interrupts_held,
    quiet_worker_exit,
    raise_interrupted,
)
from rayfed.runtime import progress
from rayfed.runtime.driver import Driver
from rayfed.runtime.parts import RunParts
from rayfed.runtime.placement import by_worker, label_matches, num_workers
from rayfed.runtime.worker import ClientWorker

# Ray's two Prometheus servers without a switch, by the variable that sets each one's port.
METRICS_PORTS = ("AUTOSCALER_METRIC_PORT", "DASHBOARD_METRIC_PORT")


def start_ray(cfg: RayConfig) -> None:
    """Connect to ``cfg.address`` or ``$RAY_ADDRESS`` (e.g. under ``ray job submit``), else start
    a new local cluster. Does nothing more if Ray is already initialised (tests, Tune trials).

    The local cluster is always a new one (``address="local"``): a cluster file left in Ray's
    temp directory by another (or a dead) Ray is never joined. It runs with Ray's token
    authentication (Ray's default) and without the Prometheus metrics endpoints, which Ray serves
    unauthenticated on every interface (set ``RAY_enable_metrics_collection=1``,
    ``AUTOSCALER_METRIC_PORT`` and ``DASHBOARD_METRIC_PORT`` to keep them); the other ports it
    listens on are in docs/security.md.
    """
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        check_reachable(address, "ray.address" if cfg.address else "RAY_ADDRESS")
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    warn_if_unauthenticated(cfg, address)
    with interrupts_held():  # a Ctrl-C inside ray.init left its core worker half-built (SIGSEGV at exit)
        if address:
            ray.init(address=address)
        else:
            os.environ.setdefault("RAY_enable_metrics_collection", "0")
            # The autoscaler's and the API server's own Prometheus servers (44217, 44227 on every
            # interface) have no switch; a port they cannot bind leaves them off (Ray logs it).
            for server in METRICS_PORTS:
                os.environ.setdefault(server, "-1")
            ray.init(address="local", num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus,
                     include_dashboard=cfg.include_dashboard)
    _keep_token_private(Path.home() / ".ray" / "auth_token")
    if threading.current_thread() is threading.main_thread():
        # ray.init replaced SIGTERM's handler (Ray's own exits by SIGABRT with a C++ stack dump):
        # end like Ctrl-C instead, through the same clean-up.
        signal.signal(signal.SIGTERM, raise_interrupted)


def _keep_token_private(token: Path) -> None:
    """Ray writes its token file with the process umask (usually readable by every user of the
    machine, who could then run code on the cluster); make it readable by its owner only."""
    try:
        if token.is_file() and token.stat().st_mode & 0o077:
            token.chmod(0o600)
    except OSError:  # not ours to change (a mounted secret): leave it as it is
        pass


def warn_if_unauthenticated(cfg: RayConfig, address: str | None) -> None:
    """One warning when Ray's token authentication is switched off (``RAY_AUTH_MODE=disabled``),
    unless ``ray.allow_unauthenticated`` accepts the risk."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "disabled" or cfg.allow_unauthenticated:
        return
    where = f"the Ray cluster at {address}" if address else "the local Ray cluster rayfed starts"
    warnings.warn(f"RAY_AUTH_MODE=disabled: {where} accepts any client without a token, and its ports listen on "
                  "every network interface, so anyone who can reach this machine can run code as you (and read "
                  "WANDB_API_KEY from your environment). Unset RAY_AUTH_MODE (token authentication is Ray's "
                  "default), or set ray.allow_unauthenticated=true to accept the risk", UnauthenticatedRayWarning,
                  stacklevel=2)


def check_reachable(address: str, key: str, timeout: float = 5.0) -> None:
    """Fail in seconds, naming the key, when a ``host:port`` Ray address does not answer (Ray
    itself would retry for minutes). ``auto``, ``local`` and ``ray://`` addresses pass through."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise ConfigError(f"key '{key}': no Ray cluster answers at {address} ({err.strerror or err}); start one "
                          f"with `ray start --head`, or unset it to run on a local Ray instance") from None


class RayExecutor:
    """Dispatches client work to worker actors; client ``i`` lives on actor ``i % len(actors)``
    (``rayfed.runtime.placement``), and each actor gets one call per phase for all its clients.

    A dead worker (``runtime.on_client_failure``): with ``retry`` Ray restarts it and reruns the
    call; with ``drop`` its clients' training is left out of the round (``each("fit")`` returns
    only the survivors) while other calls are resubmitted to the restarted actor; with ``fail``
    the error names the worker and its clients.
    """

    def __init__(self, actors: Sequence[Any], data: Sequence[list[Any]], on_failure: str = "fail",
                 max_retries: int = 0):
        self.actors = list(actors)
        self.data = list(data)  # per worker: [its shards, the global sets] as object refs (LazyClientWorker)
        self.on_failure = on_failure
        self.max_retries = max_retries

    def _call(self, worker: int, method: str, *args: Any) -> Any:
        return self.actors[worker].call.remote(self.data[worker], method, *args)

    def initial_prompt(self) -> torch.Tensor:
        return ray.get(self._call(0, "initial_prompt"))

    def machines(self) -> list[dict[str, str]]:
        """Each worker actor's machine (rayfed.runtime.machine), in worker order."""
        return ray.get([self._call(w, "machine") for w in range(len(self.actors))])

    def each(self, method: str, args_by_client: dict[int, tuple]) -> dict[int, Any]:
        """``method(client_id, *args)`` for every client, all workers at once; gathered by id."""
        groups = by_worker(args_by_client.items(), len(self.actors))
        calls = {w: self._call(w, "each", method, group) for w, group in enumerate(groups) if group}
        results: dict[int, Any] = {}
        for w, ref in calls.items():
            part = self._get(w, ref, lambda w=w: self._call(w, "each", method, groups[w]),
                             droppable=method == "fit", clients=sorted(groups[w]))
            results.update(part or {})
        return dict(sorted(results.items()))

    def sharded(self, method: str, args: tuple) -> list[Any]:
        n = len(self.actors)
        refs = [self._call(i, method, *args, i, n) for i in range(n)]
        return [self._get(i, ref, lambda i=i: self._call(i, method, *args, i, n), droppable=False, clients=[])
                for i, ref in enumerate(refs)]

    def _get(self, worker: int, ref: Any, resubmit: Any, *, droppable: bool, clients: list[int]) -> Any:
        """The call's result; a dead worker is handled by the failure policy (None: dropped)."""
        for attempt in range(self.max_retries + 1):
            try:
                return ray.get(ref)
            except ray.exceptions.RayActorError as err:
                if self.on_failure == "drop" and droppable:
                    self._revive(worker)  # back for the next round, or dropped again then
                    return None
                # retry: Ray has rerun the call max_retries times already; drop: rerun it here.
                if self.on_failure != "drop" or attempt == self.max_retries:
                    raise WorkerLostError(
                        f"worker actor {worker} (clients {clients or 'its share'}) died and "
                        f"runtime.on_client_failure={self.on_failure} with runtime.max_retries={self.max_retries} "
                        f"gives up: {type(err).__name__}") from err
                ref = resubmit()  # drop: evaluation and personalization need every client
        raise AssertionError("unreachable")

    def _revive(self, worker: int, timeout_s: float = 120.0) -> None:
        """Wait until Ray has restarted a dead worker (it reloads its backbone and shards). A call
        made before Ray has noticed the death fails at once, so this keeps asking for a while
        rather than a fixed number of times; a worker out of restarts stays dropped."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                ray.get(self._call(worker, "ready"))
                return
            except ray.exceptions.RayActorError:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.5)


class RemoteDriver:
    """Calls the driver actor's methods synchronously, so the orchestrator reads the same for
    the in-process and the Ray backend."""

    def __init__(self, handle: Any, keep_alive: Sequence[Any] = (), counter: Any = None):
        self._handle = handle
        self._counter = counter
        # The worker actors' shards and global sets in the object store: a restarted actor
        # (runtime.on_client_failure) fetches them again, so they live as long as the run.
        self._keep_alive = list(keep_alive)

    def __getattr__(self, name: str):
        method = getattr(self._handle, name)
        return lambda *args: ray.get(method.remote(*args))

    def clients_done(self) -> int:
        """How many clients the worker actors have finished so far (a progress count)."""
        return ray.get(self._counter.done.remote()) if self._counter is not None else 0


def placeable_resources(selector: dict[str, str]) -> dict[str, float]:
    """The cluster's resources, on the nodes ``selector`` admits only (all of them when empty);
    no node admitted is an error naming the key and the labels the nodes have."""
    if not selector:
        return ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    chosen = [n for n in nodes if label_matches(n.get("Labels") or {}, selector)]
    if not chosen:
        seen = sorted({f"{k}={v}" for n in nodes for k, v in (n.get("Labels") or {}).items() if k != "ray.io/node-id"})
        raise ConfigError(f"key 'runtime.label_selector': no node of the Ray cluster has the labels {selector} (its "
                          f"nodes have: {', '.join(seen) or 'no labels but their ids'}); start the nodes with `ray "
                          f"start --labels key=value`, or change or remove runtime.label_selector")
    total: dict[str, float] = {}
    for node in chosen:
        for name, amount in (node.get("Resources") or {}).items():
            total[name] = total.get(name, 0.0) + amount
    return total


def check_resources(cfg: ExperimentConfig, workers: int) -> None:
    """Fail fast, naming the keys, when the actors cannot all be placed at once (on the nodes
    ``runtime.label_selector`` admits): Ray would otherwise leave the last ones pending and the
    run would hang without an error."""
    r, total = cfg.runtime, placeable_resources(cfg.runtime.label_selector)
    need_cpu = workers * r.num_cpus_per_worker + r.num_cpus_driver
    need_gpu = workers * r.num_gpus_per_worker
    fewer = " or runtime.num_workers" if workers > 1 else ""
    where = " on the nodes runtime.label_selector admits" if r.label_selector else ""
    if need_cpu > total.get("CPU", 0) + 1e-9:
        raise ConfigError(
            f"{workers} worker actors x runtime.num_cpus_per_worker ({r.num_cpus_per_worker}) + "
            f"runtime.num_cpus_driver ({r.num_cpus_driver}) = {need_cpu:g} CPUs, but the Ray cluster has "
            f"{total.get('CPU', 0):g}{where}; lower runtime.num_cpus_per_worker (fractions are fine){fewer}")
    if need_gpu > total.get("GPU", 0) + 1e-9:
        raise ConfigError(
            f"{workers} worker actors x runtime.num_gpus_per_worker ({r.num_gpus_per_worker}) = "
            f"{need_gpu:g} GPUs, but the Ray cluster has {total.get('GPU', 0):g}{where}; lower "
            f"runtime.num_gpus_per_worker{fewer}, or set it to 0 to run on CPUs")


class LazyClientWorker:
    """A :class:`ClientWorker` as a Ray actor whose constructor takes settings only: its shards
    and the global sets come, as object refs, with every call and are fetched on the first one.
    A restarted actor (``runtime.on_client_failure``) thus reloads them from the call that finds
    it, and its constructor holds nothing in the object store that a restart would depend on."""

    def __init__(self, model: Any, settings: Any, algorithm: Any, torch_threads: int | None):
        quiet_worker_exit()  # stopped with its run (Ctrl-C, a search's end): no traceback
        self._args = (model, settings, algorithm, torch_threads)
        self._worker: ClientWorker | None = None

    def call(self, data: list[Any], method: str, *args: Any) -> Any:
        """``data``: the refs of the shards and the global sets, and a progress counter actor or None."""
        if self._worker is None:
            shards, global_sets = ray.get(list(data[:2]))
            model, settings, algorithm, threads = self._args
            self._worker = ClientWorker(model, settings, algorithm, shards, global_sets, threads)
            if data[2] is not None:  # fire and forget: a count never waits on the counter
                self._worker.on_clients_done = data[2].add.remote
        return getattr(self._worker, method)(*args)

    def device_stats(self) -> dict[str, Any]:
        """The loaded worker's process and device (tests; after the first call)."""
        assert self._worker is not None, "no call has loaded this worker yet"
        return self._worker.device_stats()


class DriverActor(Driver):
    """The :class:`Driver` as a Ray actor, stopped as quietly as the workers."""

    def __init__(self, *args: Any) -> None:
        quiet_worker_exit()
        super().__init__(*args)


def launch(cfg: ExperimentConfig, data: FederatedData) -> tuple[RemoteDriver, list[Any]]:
    """Start the worker actors (each with its clients' shards) and the driver actor; wait until
    all are ready."""
    r = cfg.runtime
    workers = num_workers(cfg)
    check_resources(cfg, workers)
    restarts = 0 if r.on_client_failure == "fail" else r.max_retries
    placed = {"label_selector": dict(r.label_selector)} if r.label_selector else {}
    worker_actor = ray.remote(LazyClientWorker).options(
        num_cpus=r.num_cpus_per_worker, num_gpus=r.num_gpus_per_worker, max_restarts=restarts,
        max_task_retries=restarts if r.on_client_failure == "retry" else 0, **placed)
    global_sets = ray.put(global_sets_of(data))  # stored once, not once per actor
    shards = [ray.put(list(group.values())) for group in by_worker(((c.client_id, c) for c in data.clients), workers)]
    parts = RunParts.from_config(cfg)
    # A count of finished clients for the progress bars, only where they are drawn (one more process).
    counter = ray.remote(progress.ClientCounter).options(num_cpus=0).remote() if progress.enabled(sys.stderr) else None
    actors = [worker_actor.remote(parts.model, parts.worker, parts.algorithm, r.torch_threads) for _ in shards]
    # Nested in a list: passed as refs, fetched once per actor (and again by a restarted one).
    refs = [[shard, global_sets, counter] for shard in shards]
    try:  # load errors now, not mid-round; a failed start frees what it reserved
        ray.get([a.call.remote(d, "ready") for a, d in zip(actors, refs, strict=True)])
    except BaseException:
        shutdown(actors, None)
        raise
    driver = RemoteDriver(ray.remote(DriverActor).options(num_cpus=r.num_cpus_driver, **placed).remote(
        parts.rounds, parts.algorithm, RayExecutor(actors, refs, r.on_client_failure, r.max_retries)),
        keep_alive=[global_sets, *shards], counter=counter)
    driver.global_prompt()  # the driver actor is up too: start-up is not charged to the first round
    return driver, actors


def shutdown(actors: Sequence[Any], driver: RemoteDriver | None) -> None:
    """Free the actors' resources (their backbones) without stopping a shared Ray session."""
    for actor in actors:
        ray.kill(actor)
    if driver is not None:
        ray.kill(driver._handle)
