"""A worker actor killed mid-round (SIGKILL to its process): retried, dropped, or fatal."""

import os
import signal
import time

import pytest
import ray
import torch

from rayfed.data.sources import federated_data
from rayfed.errors import WorkerLostError
from rayfed.runtime import ray_backend

pytestmark = pytest.mark.ray

SLOW = ("runtime.num_workers=2", "runtime.num_cpus_per_worker=0.5", "algorithm.local_steps=150",
        "runtime.max_retries=2", "eval.local=false")  # a round takes each worker a few seconds


def round_one(cfg, kill_worker: int | None = None):
    """Round 1 (and round 2), killing a worker's process one second into round 1."""
    driver, actors = ray_backend.launch(cfg, federated_data(cfg))
    try:
        pids = [s["pid"] for s in ray.get([a.device_stats.remote() for a in actors])]
        ref = driver._handle.run_round.remote(1)
        if kill_worker is not None:
            time.sleep(1.0)
            os.kill(pids[kill_worker], signal.SIGKILL)
        first = ray.get(ref)
        prompt = driver.global_prompt()
        second = driver.run_round(2) if kill_worker is not None else None
        return first, prompt, second
    finally:
        ray_backend.shutdown(actors, driver)


def test_a_killed_worker_is_restarted_and_its_round_equals_an_undisturbed_one(ray_session, tiny_config):
    cfg = tiny_config(*SLOW, "runtime.on_client_failure=retry")
    calm, calm_prompt, _ = round_one(cfg)
    hit, hit_prompt, after = round_one(cfg, kill_worker=0)
    assert torch.equal(hit_prompt, calm_prompt)
    assert hit.metrics["train/clients"] == 4 and hit.clients["dropped"] == []
    assert after.metrics["train/clients"] == 4


def test_drop_policy_aggregates_the_survivors_and_the_worker_comes_back(ray_session, tiny_config):
    cfg = tiny_config(*SLOW, "runtime.on_client_failure=drop")
    hit, _, after = round_one(cfg, kill_worker=0)
    assert hit.clients["dropped"] == [0, 2] and hit.clients["finished"] == [1, 3]  # worker 0 hosts 0 and 2
    assert hit.clients["dropped_reasons"] == {"0": "failure", "2": "failure"}
    assert hit.metrics["train/clients"] == 2 and "train/loss" in hit.metrics
    assert after.metrics["train/clients"] == 4  # restarted for the next round


def test_fail_policy_stops_naming_the_worker_and_its_clients(ray_session, tiny_config):
    cfg = tiny_config(*SLOW, "runtime.on_client_failure=fail")
    with pytest.raises(WorkerLostError, match=r"worker actor 0 \(clients \[0, 2\]\) died"):
        round_one(cfg, kill_worker=0)


def test_the_cli_reports_a_lost_worker_in_one_line(monkeypatch, tmp_path, capsys):
    import rayfed.experiment
    from rayfed.cli import main

    def lose(*args, **kwargs):
        raise WorkerLostError("worker actor 1 (clients [1, 3]) died and runtime.on_client_failure=fail gives up")

    monkeypatch.setattr(rayfed.experiment, "run_experiment", lose)
    assert main(["run", "configs/smoke.yaml", f"output_dir={tmp_path}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["rayfed: worker actor 1 (clients [1, 3]) died and runtime.on_client_failure=fail gives up "
                   "(the last checkpoint is intact: `rayfed resume` continues)"]
