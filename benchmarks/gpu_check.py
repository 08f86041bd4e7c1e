"""On a machine with one NVIDIA GPU: SmolLM2-135M, 8 clients on fractional GPU shares, checked
against the CPU and timed.

It trains the same rounds from the same seed in-process on the CPU, then on the GPU once per
layout (worker actors sharing the card, one client at a time or with the clients a worker hosts
batched into one backbone pass), and checks that each layout's global prompt and global test
loss agree with the CPU's. The clients use SGD (lr 0.3) here rather than the quickstart's Adam:
Adam's first step is ``lr * sign(gradient)``, so float rounding in a near-zero gradient
component becomes a difference of up to ``lr``, while SGD's step is linear in the gradient and
the two devices can be compared tightly. For each layout it prints the time of each round, each
worker's GPU memory and the GPU's utilization sampled with ``nvidia-smi``, then one table of
round times as ratios to the CPU and to the first layout.

    .venv/bin/python benchmarks/gpu_check.py                    # layouts 8, 2, 2b, 1b
    .venv/bin/python benchmarks/gpu_check.py --layouts 8,1b --rounds 5
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
from rayfed.model.prompt_model import build_prompt_model


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

    local = ["runtime.executor=local", "runtime.num_gpus_per_worker=0"]
    cfg = load_config("configs/quickstart.yaml", [*overrides, *local])
    with open_driver(cfg, federated_data(cfg)) as driver:
        times = []
        for r in range(1, rounds + 1):
            t = time.perf_counter()
            driver.run_round(r)
            times.append(time.perf_counter() - t)
        return {"rounds": times, "prompt": driver.global_prompt(), "metrics": driver.evaluate(rounds).metrics}


def parse_layout(text: str) -> tuple[int, bool]:
    """``"8"``: 8 worker actors, one client at a time; ``"2b"``: 2 workers, clients batched."""
    batched = text.endswith("b")
    return int(text[:-1] if batched else text), batched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--layouts", default="8,2,2b,1b",
                        help="comma-separated GPU layouts, each a worker count, 'b' for batched clients")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.03, help="the clients' SGD learning rate")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    assert torch.cuda.is_available(), "this check needs an NVIDIA GPU"
    cpus = max(1, os.cpu_count() or 1)
    common = [f"partition.num_clients={args.clients}", f"algorithm.clients_per_round={args.clients}",
              f"algorithm.rounds={args.rounds}", "eval.local=false", "algorithm.client_optimizer.name=sgd",
              f"algorithm.client_optimizer.lr={args.lr}"]
    key = "eval/global_test/loss"
    cpu = cpu_rounds(common, args.rounds)
    cpu_round = statistics.median(cpu["rounds"][1:] or cpu["rounds"])
    print(f"CPU (in-process, {torch.get_num_threads()} threads): round times (s) "
          f"{[round(t, 2) for t in cpu['rounds']]}; {key} {cpu['metrics'][key]:.5f}", flush=True)
    init = build_prompt_model(load_config("configs/quickstart.yaml").model).get_prompt()
    moved = (cpu["prompt"] - init).abs().max().item()
    results, ok = [], True
    for layout in args.layouts.split(","):
        workers, batched = parse_layout(layout)
        gpu = gpu_rounds([*common, f"runtime.num_workers={workers}", f"runtime.num_gpus_per_worker={1 / workers}",
                          f"runtime.num_cpus_per_worker={min(1.0, (cpus - 1) / workers)}",
                          f"runtime.batch_clients={str(batched).lower()}", "runtime.torch_threads=1",
                          "ray.num_gpus=1", f"ray.num_cpus={cpus}"], args.rounds)
        median = statistics.median(gpu["rounds"][1:] or gpu["rounds"])
        print(f"GPU: {workers} worker actors x {1 / workers:.3f} GPU, {args.clients} clients, batch_clients "
              f"{batched}; start-up {gpu['startup']:.1f} s")
        print(f"  round times (s): {[round(t, 2) for t in gpu['rounds']]}; median after the first {median:.2f} s; "
              f"global evaluation {gpu['eval_s']:.1f} s")
        for i, s in enumerate(gpu["stats"]):
            print(f"  worker {i}: {s}")
        if gpu["samples"]:
            utils = [u for u, _ in gpu["samples"]]
            print(f"  GPU utilization while training: mean {statistics.mean(utils):.0f}%, max {max(utils):.0f}%; "
                  f"GPU memory used at most {max(m for _, m in gpu['samples']):.0f} MiB")
        diff = (gpu["prompt"] - cpu["prompt"]).abs().max().item()
        agree = diff < 1e-2 * moved and abs(gpu["metrics"][key] - cpu["metrics"][key]) < 1e-3 * abs(cpu["metrics"][key])
        ok &= agree
        print(f"  global prompt: max |GPU - CPU| = {diff:.2e} (training moved it by up to {moved:.2e}); "
              f"{key}: GPU {gpu['metrics'][key]:.5f}, CPU {cpu['metrics'][key]:.5f}; agrees: {agree}", flush=True)
        results.append((layout, gpu["startup"], median, agree))
    print(f"\n| layout | start-up (s) | round (s) | speed vs CPU ({torch.get_num_threads()} threads) "
          f"| speed vs first layout | agrees with CPU |\n|---|---|---|---|---|---|")
    for layout, startup, median, agree in results:
        print(f"| {layout} | {startup:.1f} | {median:.2f} | {cpu_round / median:.2f}x | {results[0][2] / median:.2f}x "
              f"| {agree} |")
    print("CUDA path agrees with the CPU:", ok)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
