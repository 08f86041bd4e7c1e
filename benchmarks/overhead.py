"""Training overhead against the pure-compute bound: the same rounds several ways, in one run.

Paths, each from a cold start (its own Ray instance, model loads and data shipping included):

- ``ray, one worker per client``: one actor per client (``runtime.num_workers`` unset), as
  rayfed ran before worker actors hosted many clients (only for workloads of <= 16 clients);
- ``ray, W workers``: W worker actors each hosting its share of the clients;
- ``ray, W workers, batched``: the same with ``runtime.batch_clients`` (a worker trains its
  sampled clients in one backbone pass per step);
- ``in-process``: every client in this process (``runtime.executor=local``, all cores);
- ``bound``: two plain processes with one torch thread each, running the same clients'
  local steps with the same code (``algorithm.client_updates``, one client at a time) and no
  framework; the parent aggregates and steps the server optimizer.

Every path runs the same sampled clients from the same seed; the table says whether each ends
on the bound's prompt (``equal``: bit for bit; ``close``: within rounding, the batched pass).
Training time per round is the median over rounds after the first; memory is the machine's
used memory above what it was before the path started, sampled every 0.2 s (all processes:
actors, Ray's own daemons, this one).

    .venv/bin/python benchmarks/overhead.py --workload tiny-100      # overhead-dominated, ~3 min
    .venv/bin/python benchmarks/overhead.py --workload smollm2       # compute-bound, ~6 min
    .venv/bin/python benchmarks/overhead.py --workload clients-10k   # 10,000 clients, ~5 min
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import threading
import time
from typing import Any

import psutil
import torch

from rayfed.algorithms import build_algorithm
from rayfed.config import ExperimentConfig, load_config
from rayfed.core.sampling import derive_seed, sample_clients
from rayfed.core.server_optimizer import ServerOptimizer
from rayfed.data.formatting import tokenize
from rayfed.data.sources import federated_data
from rayfed.model import build_prompt_model
from rayfed.types import ClientUpdate

WORKLOADS: dict[str, tuple[str, list[str]]] = {
    # SmolLM2-135M, 8 clients, 4 per round, 2 local steps of batch 4: compute-bound.
    "smollm2": ("configs/quickstart.yaml", [
        "partition.num_clients=8", "algorithm.clients_per_round=4", "algorithm.local_steps=2",
        "algorithm.batch_size=4", "algorithm.rounds=4"]),
    # Tiny model, 100 clients, 50 per round, 1 local step: overhead-dominated.
    "tiny-100": ("configs/smoke.yaml", [
        "partition.num_clients=100", "partition.train_examples=8", "partition.test_examples=2",
        "data.max_examples_per_task=100", "algorithm.clients_per_round=50", "algorithm.local_steps=1",
        "algorithm.batch_size=4", "algorithm.rounds=6"]),
    "clients-10k": ("configs/scale/clients-10k.yaml", ["algorithm.rounds=6"]),
}
WORKERS = 2  # one per core of the development machines


class MemorySampler:
    """Peak of the machine's used memory above its value at start, sampled in a thread."""

    def __init__(self, interval: float = 0.2):
        self.base = psutil.virtual_memory().used
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, psutil.virtual_memory().used - self.base)
            time.sleep(interval)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**30


def run_rayfed(cfg: ExperimentConfig) -> dict[str, Any]:
    """Rounds through rayfed's driver, as a run does them (evaluation aside)."""
    from rayfed.runtime.session import open_driver

    started = time.perf_counter()
    if cfg.runtime.executor == "ray":
        import ray

        from rayfed.runtime.ray_backend import start_ray
        start_ray(cfg.ray)
    data = federated_data(cfg)
    try:
        with open_driver(cfg, data) as driver:
            ready = time.perf_counter()
            rounds = []
            for r in range(1, cfg.algorithm.rounds + 1):
                t = time.perf_counter()
                driver.run_round(r)
                rounds.append(time.perf_counter() - t)
            prompt = driver.global_prompt()
    finally:
        if cfg.runtime.executor == "ray":
            ray.shutdown()
    return {"startup": ready - started, "rounds": rounds, "total": time.perf_counter() - started, "prompt": prompt}


# --- The bound: two plain processes, no framework -------------------------------------------------
_STATE: dict[str, Any] = {}


def _bound_init(cfg: ExperimentConfig, shards: dict[int, Any]) -> None:
    torch.set_num_threads(1)
    model = build_prompt_model(cfg.model, seed=cfg.seed)
    d = cfg.data
    _STATE.update(cfg=cfg, model=model, algorithm=build_algorithm(cfg.algorithm),
                  train={cid: tokenize(s.train, model.tokenizer, d.max_source_tokens, d.max_target_tokens)
                         for cid, s in shards.items()})


def _bound_fit(args: tuple[torch.Tensor, int, list[int]]) -> list[ClientUpdate]:
    prompt, round_idx, client_ids = args
    cfg, model, algorithm, train = _STATE["cfg"], _STATE["model"], _STATE["algorithm"], _STATE["train"]
    out = []
    for cid in client_ids:
        [(delta, loss)] = algorithm.client_updates(model, [train[cid]], [prompt],
                                                   [derive_seed(cfg.seed, "client", round_idx, cid)])
        out.append(ClientUpdate(cid, delta, len(train[cid]), loss))
    return out


def run_bound(cfg: ExperimentConfig) -> dict[str, Any]:
    started = time.perf_counter()
    data = federated_data(cfg)
    halves = [{c.client_id: c for c in data.clients if c.client_id % 2 == w} for w in range(2)]
    ctx = mp.get_context("spawn")
    pools = [ctx.Pool(1, initializer=_bound_init, args=(cfg, half)) for half in halves]
    try:
        for pool in pools:
            pool.apply(os.getpid)  # wait until the model is loaded
        ready = time.perf_counter()
        algorithm = build_algorithm(cfg.algorithm)
        init = build_prompt_model(cfg.model, seed=cfg.seed).get_prompt()
        server = ServerOptimizer(init, cfg.algorithm.server_optimizer)
        rounds = []
        for r in range(1, cfg.algorithm.rounds + 1):
            t = time.perf_counter()
            ids = sample_clients(cfg.partition.num_clients, cfg.algorithm.clients_per_round, cfg.seed, r)
            prompt = server.global_prompt()
            jobs = [pool.apply_async(_bound_fit, ((prompt, r, [c for c in ids if c % 2 == w]),))
                    for w, pool in enumerate(pools)]
            updates = sorted((u for job in jobs for u in job.get()), key=lambda u: u.client_id)
            server.step(algorithm.aggregate(updates))
            rounds.append(time.perf_counter() - t)
    finally:
        for pool in pools:
            pool.terminate()
    return {"startup": ready - started, "rounds": rounds, "total": time.perf_counter() - started,
            "prompt": server.global_prompt()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="tiny-100")
    parser.add_argument("--skip", nargs="*", default=[], help="path names to leave out (e.g. in-process)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    path, overrides = WORKLOADS[args.workload]
    cfg = load_config(path, [*overrides, "runtime.torch_threads=1", "ray.num_cpus=2"])
    n = cfg.partition.num_clients
    cpu = 1.8 / WORKERS  # leave the driver actor its share of 2 CPUs
    paths: dict[str, Any] = {
        "bound": lambda: run_bound(cfg),
        f"ray, {WORKERS} workers": lambda: run_rayfed(load_config(path, [
            *overrides, f"runtime.num_workers={WORKERS}", f"runtime.num_cpus_per_worker={cpu}",
            "runtime.batch_clients=false", "ray.num_cpus=2"])),
        f"ray, {WORKERS} workers, batched": lambda: run_rayfed(load_config(path, [
            *overrides, f"runtime.num_workers={WORKERS}", f"runtime.num_cpus_per_worker={cpu}",
            "runtime.batch_clients=true", "ray.num_cpus=2"])),
        "in-process": lambda: run_rayfed(load_config(path, [*overrides, "runtime.executor=local",
                                                            "runtime.batch_clients=false"])),
    }
    if n <= 16:
        paths["ray, one worker per client"] = lambda: run_rayfed(load_config(path, [
            *overrides, "runtime.num_workers=null", f"runtime.num_cpus_per_worker={1.8 / n}",
            "runtime.batch_clients=false", "ray.num_cpus=2"]))
    results = {}
    for name, run in paths.items():
        if name in args.skip:
            continue
        sampler = MemorySampler()
        result = run()
        result["memory"] = sampler.stop()
        results[name] = result
        print(f"{name}: start-up {result['startup']:.1f} s, rounds {[round(t, 2) for t in result['rounds']]}",
              flush=True)

    bound = results["bound"]
    per_round = {name: statistics.median(r["rounds"][1:]) for name, r in results.items()}
    print(f"\nworkload {args.workload}: {cfg.model.name}, {n} clients, {cfg.algorithm.clients_per_round} per round, "
          f"{cfg.algorithm.local_steps} local step(s) of batch {cfg.algorithm.batch_size}, "
          f"{cfg.algorithm.rounds} rounds (the first is warm-up), 2 CPU cores")
    print(f"| path | training s/round | x bound | start-up s | end to end s | peak memory GiB | prompt vs bound |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        same = ("equal" if torch.equal(r["prompt"], bound["prompt"]) else
                "close" if torch.allclose(r["prompt"], bound["prompt"], atol=1e-5) else "DIFFERENT")
        print(f"| {name} | {per_round[name]:.3f} | {per_round[name] / per_round['bound']:.2f}x | "
              f"{r['startup']:.1f} | {r['total']:.1f} | {r['memory']:.2f} | {same} |")


if __name__ == "__main__":
    main()
