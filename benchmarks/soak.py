"""Soak: a long run with the tiny model, memory of the whole process tree sampled as it goes.

Runs ``algorithm.rounds`` rounds (default 1,000) of configs/smoke.yaml through rayfed's Ray
path (worker actors and the driver actor) as ``rayfed run`` does, evaluating every 50 rounds,
and prints the proportional set size of this process and every process it started (Ray's
daemons, the actors) every 50 rounds. Growth from round 100 to the last round should stay under
5%.

    .venv/bin/python benchmarks/soak.py                   # 1,000 rounds, about a minute on 2 cores
    .venv/bin/python benchmarks/soak.py --rounds 200
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time

import psutil

from rayfed.config import load_config
from rayfed.experiment import run_experiment


def tree_pss_gib() -> float:
    total = 0
    for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += proc.memory_full_info().pss
    return total / 2**30


class MemoryEvery:
    """A metric logger that samples memory every ``every`` rounds."""

    def __init__(self, every: int):
        self.every = every
        self.samples: list[tuple[int, float, float]] = []
        self.started = time.perf_counter()

    def log(self, event: dict) -> None:
        if event.get("event") == "round" and event["round"] % self.every == 0:
            sample = (event["round"], tree_pss_gib(), time.perf_counter() - self.started)
            self.samples.append(sample)
            print(f"round {sample[0]:>5}: {sample[1]:.3f} GiB, {sample[2]:.0f} s", flush=True)

    def close(self) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--every", type=int, default=50)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config("configs/smoke.yaml", [
            f"algorithm.rounds={args.rounds}", f"eval.eval_every={args.every}", "algorithm.local_steps=1",
            "runtime.num_workers=2", "runtime.num_cpus_per_worker=0.9", f"output_dir={out}"])
        memory = MemoryEvery(args.every)
        run_experiment(cfg, loggers=[memory])
    base = next((gib for r, gib, _ in memory.samples if r >= 100), memory.samples[0][1])
    last_round, last, seconds = memory.samples[-1]
    print(f"\n{args.rounds} rounds in {seconds:.0f} s; memory at round 100 {base:.3f} GiB, at round {last_round} "
          f"{last:.3f} GiB: growth {100 * (last - base) / base:+.1f}%")


if __name__ == "__main__":
    main()
