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

Each path runs in a fresh process, so its start-up and memory are its own. Every path runs the
same sampled clients from the same seed; the table gives how far each final prompt is from the
bound's (bit-identical, except the batched pass, whose rounding differs).
Training time per round is the median over rounds after the first (and over repeats); memory is the peak
proportional set size (PSS) of the path's process tree, sampled every 0.25 s: the process, the
Ray daemons and actors it starts, the bound's two workers (shared pages are split between the
processes that map them, not counted twice).

    .venv/bin/python benchmarks/overhead.py --workload tiny-100      # overhead-dominated, ~3 min
    .venv/bin/python benchmarks/overhead.py --workload smollm2       # compute-bound, ~6 min
    .venv/bin/python benchmarks/overhead.py --workload clients-10k   # 10,000 clients, ~5 min
    .venv/bin/python benchmarks/overhead.py --workload smollm2 --repeats 3 --skip in-process \
        "ray, 2 workers, batched" "ray, one worker per client"       # bound vs rayfed, interleaved

A single run's ratio carries the machine's noise (the bound's rounds vary by about 25% from run
to run on 2 cores); ``--repeats`` runs the paths interleaved and takes each ratio within a repeat.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import torch
from safetensors.torch import load_file, save_file

from rayfed.algorithms import build_algorithm
from rayfed.config import ExperimentConfig, load_config
from rayfed.core.sampling import derive_seed, sample_clients
from rayfed.core.server_optimizer import ServerOptimizer
from rayfed.data.formatting import tokenize
from rayfed.data.sources import federated_data
from rayfed.model.prompt_model import build_prompt_model
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
        "algorithm.batch_size=4", "algorithm.rounds=16"]),
    "clients-10k": ("configs/scale/clients-10k.yaml", ["algorithm.rounds=11"]),
}
WORKERS = 2  # one per core of the development machines


def settle(timeout: float = 60.0) -> None:
    """Wait until no Ray daemon of an earlier path is left and used memory has stopped falling."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(
            p.info["name"] in ("raylet", "gcs_server") for p in psutil.process_iter(["name"])):
        time.sleep(0.5)
    last = psutil.virtual_memory().used
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = psutil.virtual_memory().used
        if now >= last - 2**24:  # within 16 MiB
            return
        last = now


def used_gib() -> float:
    """Memory of this process and its descendants (every actor and Ray daemon it started), GiB."""
    return round(tree_pss(psutil.Process()) / 2**30, 2)


def tree_pss(root: psutil.Process) -> int:
    """Proportional set size of a process and all its descendants (Ray's daemons and actors are
    descendants of the process that started Ray), in bytes; shared pages are split, not repeated."""
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += proc.memory_full_info().pss
    return total


class MemorySampler:
    """Peak memory of a process tree, sampled in a thread."""

    def __init__(self, pid: int, interval: float = 0.25):
        self.root = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, tree_pss(self.root))
            except psutil.NoSuchProcess:
                return
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
            rounds, memory = [], []
            for r in range(1, cfg.algorithm.rounds + 1):
                t = time.perf_counter()
                driver.run_round(r)
                rounds.append(time.perf_counter() - t)
                memory.append(used_gib())
            prompt = driver.global_prompt()
    finally:
        if cfg.runtime.executor == "ray":
            ray.shutdown()
    return {"startup": ready - started, "rounds": rounds, "total": time.perf_counter() - started, "prompt": prompt,
            "memory_by_round": memory}


# --- The bound: two plain processes, no framework -------------------------------------------------
_STATE: dict[str, Any] = {}


def _bound_init(cfg: ExperimentConfig, shards: dict[int, Any]) -> None:
    torch.set_num_threads(1)
    model = build_prompt_model(cfg.model, seed=cfg.seed)
    d = cfg.data
    _STATE.update(cfg=cfg, model=model, algorithm=build_algorithm(cfg.algorithm),
                  train={cid: tokenize(s.train, model.tokenizer, d.max_source_tokens, d.max_target_tokens)
                         for cid, s in shards.items()})


def _bound_initial_prompt() -> torch.Tensor:
    return _STATE["model"].get_prompt()


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
    pools = [ctx.Pool(1, initializer=_bound_init, initargs=(cfg, half)) for half in halves]
    try:
        for pool in pools:
            pool.apply(os.getpid)  # wait until the model is loaded
        ready = time.perf_counter()
        algorithm = build_algorithm(cfg.algorithm)
        init = pools[0].apply(_bound_initial_prompt)
        server = ServerOptimizer(init, cfg.algorithm.server_optimizer)
        rounds, memory = [], []
        for r in range(1, cfg.algorithm.rounds + 1):
            t = time.perf_counter()
            ids = sample_clients(cfg.partition.num_clients, cfg.algorithm.clients_per_round, cfg.seed, r)
            prompt = server.global_prompt()
            jobs = [pool.apply_async(_bound_fit, ((prompt, r, [c for c in ids if c % 2 == w]),))
                    for w, pool in enumerate(pools)]
            updates = sorted((u for job in jobs for u in job.get()), key=lambda u: u.client_id)
            server.step(algorithm.aggregate(updates))
            rounds.append(time.perf_counter() - t)
            memory.append(used_gib())
    finally:
        for pool in pools:
            pool.terminate()
    return {"startup": ready - started, "rounds": rounds, "total": time.perf_counter() - started,
            "prompt": server.global_prompt(), "memory_by_round": memory}


def path_configs(workload: str) -> dict[str, Any]:
    """Each path's runner, on the workload's config."""
    path, overrides = WORKLOADS[workload]
    n = load_config(path, overrides).partition.num_clients
    cpu = 1.8 / WORKERS  # leave the driver actor its share of 2 CPUs

    def cfg(*extra: str) -> ExperimentConfig:
        return load_config(path, [*overrides, "ray.num_cpus=2", *extra])

    paths: dict[str, Any] = {
        "bound": lambda: run_bound(cfg("runtime.torch_threads=1")),
        f"ray, {WORKERS} workers": lambda: run_rayfed(cfg(
            f"runtime.num_workers={WORKERS}", f"runtime.num_cpus_per_worker={cpu}", "runtime.batch_clients=false")),
        f"ray, {WORKERS} workers, batched": lambda: run_rayfed(cfg(
            f"runtime.num_workers={WORKERS}", f"runtime.num_cpus_per_worker={cpu}", "runtime.batch_clients=true")),
        "in-process": lambda: run_rayfed(cfg("runtime.executor=local", "runtime.batch_clients=false")),
    }
    if n <= 16:
        paths["ray, one worker per client"] = lambda: run_rayfed(cfg(
            "runtime.num_workers=null", f"runtime.num_cpus_per_worker={1.8 / n}", "runtime.batch_clients=false"))
    return paths


def run_one(workload: str, name: str, out: Path) -> None:
    """Child process: run one path, write its timings and final prompt to ``out``."""
    result = path_configs(workload)[name]()
    save_file({"prompt": result.pop("prompt")}, str(out.with_suffix(".safetensors")))
    out.write_text(json.dumps(result))


def run_path(workload: str, name: str, tmp: Path) -> dict[str, Any]:
    """One path in a fresh process (its start-up and memory are all its own), with its peak memory."""
    out = tmp / f"{abs(hash(name))}.json"
    settle()
    child = subprocess.Popen([sys.executable, __file__, "--workload", workload, "--child", name, "--out", str(out)])
    sampler = MemorySampler(child.pid)
    if child.wait() != 0:
        raise SystemExit(f"path {name!r} failed")
    result = json.loads(out.read_text())
    settle()
    result["memory"] = sampler.stop()
    result["prompt"] = load_file(str(out.with_suffix(".safetensors")))["prompt"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="tiny-100")
    parser.add_argument("--skip", nargs="*", default=[], help="path names to leave out (e.g. in-process)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run every path this many times, interleaved; ratios are taken within a repeat")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.child:
        return run_one(args.workload, args.child, Path(args.out))

    names = [name for name in path_configs(args.workload) if name not in args.skip]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name in names:
                result = run_path(args.workload, name, Path(tmp))
                runs[name].append(result)
                print(f"[{repeat + 1}/{args.repeats}] {name}: start-up {result['startup']:.1f} s, rounds "
                      f"{[round(t, 2) for t in result['rounds']]}, memory after each round (GiB) "
                      f"{result['memory_by_round']}", flush=True)

    cfg = load_config(*WORKLOADS[args.workload])
    n = cfg.partition.num_clients
    # Per repeat: each path's median round after the first, and its ratio to the bound's in that repeat.
    per_round = {name: [statistics.median(r["rounds"][1:]) for r in rs] for name, rs in runs.items()}
    ratios = {name: [t / b for t, b in zip(ts, per_round["bound"])] for name, ts in per_round.items()}
    print(f"\nworkload {args.workload}: {cfg.model.name}, {n} clients, {cfg.algorithm.clients_per_round} per round, "
          f"{cfg.algorithm.local_steps} local step(s) of batch {cfg.algorithm.batch_size}, "
          f"{cfg.algorithm.rounds} rounds (the first is warm-up), {os.cpu_count()} CPU cores, "
          f"{args.repeats} repeat(s); medians over repeats, x bound's range in brackets")
    print("| path | training s/round | x bound | start-up s | end to end s | peak memory GiB | final prompt vs bound |")
    print("|---|---|---|---|---|---|---|")
    bound = runs["bound"][0]["prompt"]
    for name, rs in runs.items():
        diff = max((r["prompt"] - bound).abs().max().item() for r in rs)
        same = "bit-identical" if diff == 0 else f"max diff {diff:.1e}"
        spread = f" [{min(ratios[name]):.2f}-{max(ratios[name]):.2f}]" if args.repeats > 1 else ""
        print(f"| {name} | {statistics.median(per_round[name]):.3f} | {statistics.median(ratios[name]):.2f}x{spread} | "
              f"{statistics.median(r['startup'] for r in rs):.1f} | {statistics.median(r['total'] for r in rs):.1f} | "
              f"{max(r['memory'] for r in rs):.2f} | {same} |")


if __name__ == "__main__":
    main()
