"""One place that turns a config and its data into a driver, in-process or on Ray, and tears
it down again: the federated run, ``rayfed personalize`` and Tune trials all start here."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rayfed.config import ExperimentConfig
from rayfed.data.partition import FederatedData, global_sets_of
from rayfed.runtime import progress


@contextmanager
def open_driver(cfg: ExperimentConfig, data: FederatedData) -> Iterator[Any]:
    """Yield a driver (``runtime.executor=local``: every client in this process; ``ray``: client
    actors and a driver actor, killed on exit without stopping a shared Ray session)."""
    if cfg.runtime.executor == "local":
        from rayfed.runtime.driver import Driver, InProcessExecutor
        from rayfed.runtime.parts import RunParts
        from rayfed.runtime.worker import ClientWorker

        parts = RunParts.from_config(cfg)
        worker = ClientWorker(parts.model, parts.worker, parts.algorithm, list(data.clients), global_sets_of(data))
        counter = progress.ClientCounter()
        worker.on_clients_done = counter.add
        with progress.counting(counter.done):
            yield Driver(parts.rounds, parts.algorithm, InProcessExecutor(worker))
        return
    from rayfed.model.builtin import resolve_model_path
    from rayfed.runtime import ray_backend

    resolve_model_path(cfg.model.name)  # convert a built-in model once, before actors load it
    ray_backend.start_ray(cfg.ray)
    driver, actors = ray_backend.launch(cfg, data)
    try:
        with progress.counting(driver.clients_done):
            yield driver
    finally:
        ray_backend.shutdown(actors, driver)
