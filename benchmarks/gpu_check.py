"""On a machine with one NVIDIA GPU: SmolLM2-135M, 8 clients on fractional GPU shares, checked
against the CPU and timed.

It trains the same rounds twice from the same seed, on the GPU (8 worker actors at 0.125 GPU
each, or ``--workers`` of them with the clients batched) and on the CPU (in-process), and
checks that the global prompts and the global test losses agree. The clients use SGD (lr 0.3)
here rather than the quickstart's Adam: Adam's first step is ``lr * sign(gradient)``, so float
rounding in a near-zero gradient component becomes a difference of up to ``lr``, while SGD's
step is linear in the gradient and the two devices can be compared tightly. It
prints the time of each round, each worker's GPU memory, and the GPU's utilization sampled with
``nvidia-smi`` while the rounds run.

    .venv/bin/python benchmarks/gpu_check.py                   # one actor per client, 0.125 GPU each
    .venv/bin/python benchmarks/gpu_check.py --workers 2 --batch-clients
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import threading
import time

import torch

from rayfed.config import load_config
from rayfed.data.sources import federated_data
from rayfed.model import build_prompt_model


def utilization_sampler(samples: list[tuple[float, float]], stop: threading.Event) -> None:
    """``(utilization %, memory used MiB)`` from nvidia-smi every half second."""
    while not stop.is_set():
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, check=False).stdout.strip().splitlines()
        if out:
            util, mem = (float(x) for x in out[0].split(","))
            samples.append((util, mem))
        stop.wait(0.5)


def gpu_rounds(overrides: list[str], rounds: int) -> dict:
    import ray

    from rayfed.runtime import ray_backend

    cfg = load_config("configs/quickstart.yaml", overrides)
    ray_backend.start_ray(cfg.ray)
    data = federated_data(cfg)
    started = time.perf_counter()
    driver, actors = ray_backend.launch(cfg, data)
    startup = time.perf_counter() - started
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    thread = threading.Thread(target=utilization_sampler, args=(samples, stop), daemon=True)
    thread.start()
    try:
        times = []
        for r in range(1, rounds + 1):
            t = time.perf_counter()
            driver.run_round(r)
            times.append(time.perf_counter() - t)
        t = time.perf_counter()
        evaluation = driver.evaluate(rounds)
        eval_s = time.perf_counter() - t
        stats = ray.get([a.device_stats.remote() for a in actors])
        prompt = driver.global_prompt()
    finally:
        stop.set()
        thread.join()
        ray_backend.shutdown(actors, driver)
        ray.shutdown()
    return {"startup": startup, "rounds": times, "eval_s": eval_s, "stats": stats, "samples": samples,
            "prompt": prompt, "metrics": evaluation.metrics}


def cpu_rounds(overrides: list[str], rounds: int) -> dict:
    from rayfed.runtime.session import open_driver

    cfg = load_config("configs/quickstart.yaml", [*overrides, "runtime.executor=local", "runtime.num_gpus_per_worker=0"])
    with open_driver(cfg, federated_data(cfg)) as driver:
        times = []
        for r in range(1, rounds + 1):
            t = time.perf_counter()
            driver.run_round(r)
            times.append(time.perf_counter() - t)
        return {"rounds": times, "prompt": driver.global_prompt(), "metrics": driver.evaluate(rounds).metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None, help="worker actors (default: one per client)")
    parser.add_argument("--batch-clients", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    assert torch.cuda.is_available(), "this check needs an NVIDIA GPU"
    workers = args.workers or args.clients
    cpus = max(1, os.cpu_count() or 1)
    common = [f"partition.num_clients={args.clients}", f"algorithm.clients_per_round={args.clients}",
              f"algorithm.rounds={args.rounds}", "eval.local=false", "algorithm.client_optimizer.name=sgd",
              "algorithm.client_optimizer.lr=0.3"]
    gpu = gpu_rounds([*common, f"runtime.num_workers={workers}", f"runtime.num_gpus_per_worker={1 / workers}",
                      f"runtime.num_cpus_per_worker={min(1.0, (cpus - 1) / workers)}",
                      f"runtime.batch_clients={str(args.batch_clients).lower()}", "runtime.torch_threads=1",
                      f"ray.num_gpus=1", f"ray.num_cpus={cpus}"], args.rounds)
    print(f"GPU: {workers} worker actors x {1 / workers:.3f} GPU, {args.clients} clients, batch_clients "
          f"{args.batch_clients}; start-up {gpu['startup']:.1f} s")
    print(f"  round times (s): {[round(t, 2) for t in gpu['rounds']]}; median after the first "
          f"{statistics.median(gpu['rounds'][1:] or gpu['rounds']):.2f} s; global evaluation {gpu['eval_s']:.1f} s")
    for i, s in enumerate(gpu["stats"]):
        print(f"  worker {i}: {s}")
    if gpu["samples"]:
        utils = [u for u, _ in gpu["samples"]]
        print(f"  GPU utilization while training: mean {statistics.mean(utils):.0f}%, max {max(utils):.0f}%; "
              f"GPU memory used at most {max(m for _, m in gpu['samples']):.0f} MiB")
    cpu = cpu_rounds(common, args.rounds)
    print(f"CPU (in-process, {torch.get_num_threads()} threads): round times (s) {[round(t, 2) for t in cpu['rounds']]}")
    init = build_prompt_model(load_config("configs/quickstart.yaml").model).get_prompt()
    moved = (cpu["prompt"] - init).abs().max().item()
    diff = (gpu["prompt"] - cpu["prompt"]).abs().max().item()
    key = "eval/global_test/loss"
    print(f"global prompt: max |GPU - CPU| = {diff:.2e} (training moved it by up to {moved:.2e}); "
          f"{key}: GPU {gpu['metrics'][key]:.5f}, CPU {cpu['metrics'][key]:.5f}")
    ok = diff < 1e-2 * moved and abs(gpu["metrics"][key] - cpu["metrics"][key]) < 1e-3 * abs(cpu["metrics"][key])
    print("CUDA path agrees with the CPU:", ok)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
