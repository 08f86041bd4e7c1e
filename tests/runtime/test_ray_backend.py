"""Client actors and the driver actor on a local 2-CPU Ray cluster."""

import time
from pathlib import Path

import pytest
import torch

from rayfed.experiment import run_experiment
from rayfed.outputs.checkpoint import load_prompt
from rayfed.runtime.machine import kind, machine

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


def test_ray_and_in_process_executors_give_the_same_prompt_whatever_the_number_of_workers(
        ray_session, tiny_config, tmp_path):
    """One worker for all four clients, two workers of two (placed by a Ray label selector), one per
    client: the same numbers, bit for bit (every actor runs one torch thread); the in-process
    executor agrees, and so do two workers that each train their clients in one batched pass (up
    to rounding). Each run records where its driver and workers computed."""
    node = ray_session.get_runtime_context().get_node_id()
    prompts, summaries = {}, {}
    for name, overrides in {"ray-1": ["runtime.num_workers=1"],
                            "ray-2": ["runtime.num_workers=2", f"runtime.label_selector={{ray.io/node-id: {node}}}"],
                            "ray-4": ["runtime.num_workers=null"], "local": ["runtime.executor=local"],
                            "ray-2-batched": ["runtime.num_workers=2", "runtime.batch_clients=true"]}.items():
        cfg = tiny_config("algorithm.clients_per_round=3", f"output_dir={tmp_path / name}", *overrides)
        summaries[name] = run_experiment(cfg, loggers=[])
        prompts[name] = load_prompt(Path(cfg.output_dir) / "global_prompt.safetensors")[0]
    for name in ("ray-1", "ray-2"):
        assert torch.equal(prompts[name], prompts["ray-4"]), name
        assert summaries[name]["final"] == summaries["ray-4"]["final"], name
        assert summaries[name]["clients"] == summaries["ray-4"]["clients"], name
    for name in ("local", "ray-2-batched"):
        assert torch.allclose(prompts["ray-4"], prompts[name], atol=1e-5), name
        assert summaries["ray-4"]["final"]["loss"] == pytest.approx(summaries[name]["final"]["loss"], rel=1e-5)
    here = kind(machine())
    for name, workers in (("ray-1", 1), ("ray-2", 2), ("ray-4", 4), ("local", 1)):
        where = summaries[name]["machines"]
        assert [kind(m) for m in [where["driver"], *where["workers"]]] == [here] * (1 + workers), name


def test_fractional_gpu_client_actors_schedule_and_train_on_cuda_or_fail_naming_the_key(ray_session, tiny_config):
    """Four client actors at 0.25 GPU each fill the session's one (faked on a CPU machine) GPU.
    With CUDA they train; without it each stops naming the key instead of training on the CPU in
    silence, and the failed start hands its GPU share back."""
    from rayfed.data.sources import federated_data
    from rayfed.errors import UserError
    from rayfed.runtime import ray_backend

    cfg = tiny_config("runtime.num_gpus_per_worker=0.25", "eval.local=false")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match=r"the worker hosting client \d on .* was given a GPU share "
                                            r"\(runtime.num_gpus_per_worker > 0\) but finds no CUDA"):
            try:
                ray_backend.launch(cfg, federated_data(cfg))
            except ray_session.exceptions.RayTaskError as err:
                raise err.cause from None
        wait_for_resources(ray_session, "GPU", 1.0)
        return
    driver, actors = ray_backend.launch(cfg, federated_data(cfg))
    try:
        assert ray_session.available_resources().get("GPU", 0) == pytest.approx(0.0)
        assert driver.run_round(1).metrics["train/clients"] == 4
        stats = ray_session.get([a.device_stats.remote() for a in actors])
        assert all(st["device"].startswith("cuda") for st in stats), stats
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

    cfg = tiny_config("runtime.num_cpus_per_worker=0.5")  # 4 x 0.5 + 0.1 driver > 2 CPUs
    with pytest.raises(ConfigError, match="runtime.num_cpus_per_worker.*runtime.num_workers"):
        check_resources(cfg, 4)
    check_resources(cfg, 2)  # two workers of two clients fit
    with pytest.raises(ConfigError, match="runtime.num_gpus_per_worker"):
        check_resources(tiny_config("runtime.num_gpus_per_worker=0.5"), 4)
    check_resources(tiny_config(), 4)  # 4 x 0.25 + 0.1 fits
    # A label selector no node satisfies would leave every actor pending: refused, naming the key.
    with pytest.raises(ConfigError, match=r"runtime.label_selector.*\{'cpu-family': 'epyc'\}.*ray start --labels"):
        check_resources(tiny_config("runtime.label_selector={cpu-family: epyc}"), 4)
    node = ray_session.get_runtime_context().get_node_id()
    check_resources(tiny_config(f"runtime.label_selector={{ray.io/node-id: {node}, cpu-family: '!epyc'}}"), 4)
