"""Client actors and the driver actor on a local 2-CPU Ray cluster."""

import time
from pathlib import Path

import pytest
import torch

from rayfed.checkpoint import load_prompt
from rayfed.experiment import run_experiment

pytestmark = pytest.mark.ray


def test_ray_run_with_four_client_actors_lowers_global_loss_and_personalizes(ray_session, tiny_config):
    cfg = tiny_config("runtime.executor=ray", "personalize.enabled=true", "personalize.interp_ratios=[0,1]")
    summary = run_experiment(cfg, loggers=[])
    assert summary["final"]["loss"] < summary["initial"]["loss"]
    assert len(summary["clients"]) == 4
    # Ratio 0 is exactly the global prompt: the driver actor's interpolation changes nothing.
    last = [r for r in summary["personalization"]["curve"] if r["epoch"] == cfg.personalize.local_epochs]
    ratio_0 = next(r for r in last if r["interp_ratio"] == 0)
    assert ratio_0["global_test/loss_mean"] == pytest.approx(summary["final"]["loss"], rel=1e-5)
    ratio_1 = next(r for r in last if r["interp_ratio"] == 1)
    assert ratio_1["local_test/loss_mean"] < ratio_0["local_test/loss_mean"]
    wait_for_resources(ray_session, "CPU", 2.0)  # the actors were killed at the end


def test_ray_and_in_process_executors_give_the_same_prompt(ray_session, tiny_config, tmp_path):
    prompts, summaries = {}, {}
    for executor in ("ray", "local"):
        cfg = tiny_config(f"runtime.executor={executor}", "algorithm.clients_per_round=3",
                          f"output_dir={tmp_path / executor}")
        summaries[executor] = run_experiment(cfg, loggers=[])
        prompts[executor] = load_prompt(Path(cfg.output_dir) / "global_prompt.safetensors")[0]
    assert torch.allclose(prompts["ray"], prompts["local"], atol=1e-5)
    assert summaries["ray"]["final"]["loss"] == pytest.approx(summaries["local"]["final"]["loss"], rel=1e-5)


def test_fractional_gpu_client_actors_schedule_and_train(ray_session, tiny_config):
    """Four client actors at 0.25 GPU each fill the session's one (faked) GPU."""
    from rayfed.data.sources import federated_data
    from rayfed.runtime import ray_backend

    cfg = tiny_config("runtime.num_gpus_per_client=0.25", "eval.local=false")
    driver, actors = ray_backend.launch(cfg, federated_data(cfg))
    try:
        assert ray_session.available_resources().get("GPU", 0) == pytest.approx(0.0)
        assert driver.run_round(1).metrics["train/clients"] == 4
    finally:
        ray_backend.shutdown(actors, driver)
    wait_for_resources(ray_session, "GPU", 1.0)


def wait_for_resources(ray, name, amount, timeout=20.0):
    """Actor teardown is asynchronous: wait until the resources are back."""
    deadline = time.monotonic() + timeout
    while ray.available_resources().get(name, 0) < amount - 1e-6:
        assert time.monotonic() < deadline, f"{name} not released: {ray.available_resources()}"
        time.sleep(0.2)


def test_actors_that_cannot_all_fit_fail_fast_naming_the_key(ray_session, tiny_config):
    from rayfed.config import ConfigError
    from rayfed.runtime.ray_backend import check_resources

    cfg = tiny_config("runtime.num_cpus_per_client=0.5")  # 4 x 0.5 + 0.1 driver > 2 CPUs
    with pytest.raises(ConfigError, match="runtime.num_cpus_per_client"):
        check_resources(cfg, 4)
    with pytest.raises(ConfigError, match="runtime.num_gpus_per_client"):
        check_resources(tiny_config("runtime.num_gpus_per_client=0.5"), 4)
    check_resources(tiny_config(), 4)  # 4 x 0.25 + 0.1 fits
