"""On a machine with one NVIDIA GPU: the quickstart workload on fractional GPU shares, checked
against the CPU and timed, with the GPU's utilization and the model FLOP utilization.

For each adapter method (``--methods``, ``model.peft`` values) it trains the same rounds from the
same seed in-process on the CPU in float32 (the reference), then on the GPU in ``--dtype`` once
per layout (worker actors sharing the card, one client at a time or with the clients a worker
hosts batched into one backbone pass), and checks that each layout's global adapter and global
test loss agree with the CPU's: tightly in float32, within bfloat16's rounding in bfloat16.
The clients use SGD (lr 0.03) here rather than the quickstart's Adam: Adam's first step is
``lr * sign(gradient)``, so float rounding in a near-zero gradient component becomes a
difference of up to ``lr``, while SGD's step is linear in the gradient and the devices can be
compared tightly.

For each layout it prints the time of each round, each worker's GPU memory, and the GPU's
utilization while training: the SM activity NVML's GPM counters report on Hopper and newer
(the share of SM cycles with a warp resident, averaged over the SMs), else nvidia-smi's
``utilization.gpu`` (the share of time any kernel ran, which a single small kernel keeps at
100%), labelled as which it is. The model FLOP utilization is the FLOPs of the timed rounds,
counted by ``torch.utils.flop_counter`` on one in-process replay of the same rounds (the
batched pass; padded positions count, as the kernels compute them), over their time and the
card's dense peak for the dtype (``--peak-tflops`` overrides the table).

    .venv/bin/python benchmarks/gpu_check.py                                  # 8 clients; layouts 8, 2, 2b, 1b
    .venv/bin/python benchmarks/gpu_check.py --dtype bfloat16 --methods prompt_tuning,prefix_tuning,lora \\
        --layouts 1b --rounds 3
    .venv/bin/python benchmarks/gpu_check.py --dtype bfloat16 --clients 64 --layouts 1b --no-cpu-reference
    .venv/bin/python benchmarks/gpu_check.py --smoke                          # the plumbing on a CPU, tiny model
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import threading
import time
from typing import Any

import torch

from rayfed.config import load_config
from rayfed.data.sources import federated_data
from rayfed.model.prompt_model import build_prompt_model
from rayfed.settings import ModelSettings

CONFIG = "configs/quickstart.yaml"
SMOKE_CONFIG = "configs/smoke.yaml"  # --smoke: the tiny model on synthetic tasks, on the CPU
# Dense (no sparsity) peak TFLOP/s by device name and dtype, from NVIDIA's data sheets (SXM
# parts). float32 here is the plain FP32 rate: torch's default matmul precision uses no TF32.
PEAK_TFLOPS = {"H200": {"bfloat16": 989.4, "float16": 989.4, "float32": 66.9},
               "H100": {"bfloat16": 989.4, "float16": 989.4, "float32": 66.9},
               "A100": {"bfloat16": 312.0, "float16": 312.0, "float32": 19.5}}


def peak_tflops(device_name: str, dtype: str) -> float | None:
    """The table's peak for a device (matched by name) and dtype; None when the device is not listed."""
    for key, peaks in PEAK_TFLOPS.items():
        if key in device_name:
            return peaks.get(dtype)
    return None


class UtilizationSampler:
    """The GPU's utilization over a stretch of training: NVML GPM's SM activity and occupancy
    where the device supports GPM, else nvidia-smi's ``utilization.gpu``, sampled every half
    second; the GPU memory in use from nvidia-smi either way."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []  # (utilization.gpu %, memory used MiB)
        self.gpm: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._nvml: Any = None
        self._first: Any = None

    def __enter__(self) -> UtilizationSampler:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            if pynvml.nvmlGpmQueryDeviceSupport(handle).isSupportedDevice:
                self._nvml, self._handle = pynvml, handle
                self._first = pynvml.nvmlGpmSampleAlloc()
                pynvml.nvmlGpmSampleGet(handle, self._first)
        except Exception as err:  # no nvidia-ml-py, no GPM on this device or under this runtime
            self.gpm_error = f"{type(err).__name__}: {err}"
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._nvml is None:
            return
        n = self._nvml
        last = n.nvmlGpmSampleAlloc()
        try:
            n.nvmlGpmSampleGet(self._handle, last)
            get = n.c_nvmlGpmMetricsGet_t()
            get.version = n.NVML_GPM_METRICS_GET_VERSION
            get.numMetrics = 2
            get.sample1, get.sample2 = self._first, last
            get.metrics[0].metricId = n.NVML_GPM_METRIC_SM_UTIL
            get.metrics[1].metricId = n.NVML_GPM_METRIC_SM_OCCUPANCY
            n.nvmlGpmMetricsGet(get)
            self.gpm = {"sm_activity": get.metrics[0].value, "sm_occupancy": get.metrics[1].value}
        except Exception as err:
            self.gpm_error = f"{type(err).__name__}: {err}"
        finally:
            n.nvmlGpmSampleFree(self._first)
            n.nvmlGpmSampleFree(last)

    def _poll(self) -> None:
        while not self._stop.is_set():
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                  "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, check=False).stdout.strip().splitlines()
            if out:
                util, mem = (float(x) for x in out[0].split(","))
                self.samples.append((util, mem))
            self._stop.wait(0.5)

    def report(self) -> str:
        parts = []
        if self.gpm:
            parts.append(f"SM activity {self.gpm['sm_activity']:.0f}%, SM occupancy {self.gpm['sm_occupancy']:.0f}% "
                         "(NVML GPM, over the training rounds)")
        else:
            parts.append(f"no SM counters ({getattr(self, 'gpm_error', 'GPM not supported')})")
        if self.samples:
            utils = [u for u, _ in self.samples]
            parts.append(f"nvidia-smi utilization.gpu (time any kernel ran) mean {statistics.mean(utils):.0f}%, "
                         f"max {max(utils):.0f}%; GPU memory used at most {max(m for _, m in self.samples):.0f} MiB")
        return "; ".join(parts)


def timed_rounds(driver: Any, rounds: int) -> list[float]:
    times = []
    for r in range(1, rounds + 1):
        t = time.perf_counter()
        driver.run_round(r)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times


def gpu_rounds(config: str, overrides: list[str], rounds: int, sample: bool) -> dict:
    """The rounds on Ray worker actors as the overrides lay them out."""
    import ray

    from rayfed.runtime import ray_backend

    cfg = load_config(config, overrides)
    ray_backend.start_ray(cfg.ray)
    data = federated_data(cfg)
    started = time.perf_counter()
    driver, actors = ray_backend.launch(cfg, data)
    startup = time.perf_counter() - started
    sampler = UtilizationSampler() if sample else None
    try:
        if sampler is not None:
            with sampler:
                times = timed_rounds(driver, rounds)
        else:
            times = timed_rounds(driver, rounds)
        t = time.perf_counter()
        evaluation = driver.evaluate(rounds)
        eval_s = time.perf_counter() - t
        stats = ray.get([a.device_stats.remote() for a in actors])
        prompt = driver.global_prompt()
    finally:
        ray_backend.shutdown(actors, driver)
        ray.shutdown()
    return {"startup": startup, "rounds": times, "eval_s": eval_s, "stats": stats, "sampler": sampler,
            "prompt": prompt, "metrics": evaluation.metrics}


def in_process_rounds(config: str, overrides: list[str], rounds: int, count_flops: bool = False) -> dict:
    """The rounds in this process (``runtime.executor=local``: one backbone, the clients batched
    if the overrides say so); with ``count_flops`` each round's FLOPs as torch's counter sees them."""
    from torch.utils.flop_counter import FlopCounterMode

    from rayfed.runtime.session import open_driver

    cfg = load_config(config, [*overrides, "runtime.executor=local"])
    flops, times = [], []
    with open_driver(cfg, federated_data(cfg)) as driver:
        for r in range(1, rounds + 1):
            counter = FlopCounterMode(display=False) if count_flops else None
            t = time.perf_counter()
            if counter is not None:
                with counter:
                    driver.run_round(r)
                flops.append(counter.get_total_flops())
            else:
                driver.run_round(r)
            times.append(time.perf_counter() - t)
        return {"rounds": times, "flops": flops, "prompt": driver.global_prompt(),
                "metrics": driver.evaluate(rounds).metrics}


def parse_layout(text: str) -> tuple[int, bool]:
    """``"8"``: 8 worker actors, one client at a time; ``"2b"``: 2 workers, clients batched."""
    batched = text.endswith("b")
    return int(text[:-1] if batched else text), batched


def agreement(dtype: str, device: dict, cpu: dict, moved: float, key: str) -> tuple[bool, str]:
    """Whether a device run agrees with the float32 CPU reference: in float32 the adapter to 1% of
    how far training moved it and the loss to 1e-3 relative; in a half dtype the loss to 2%
    relative (the adapter's difference is printed, not judged: bfloat16 keeps 8 bits of mantissa)."""
    diff = (device["prompt"] - cpu["prompt"]).abs().max().item()
    loss_gap = abs(device["metrics"][key] - cpu["metrics"][key]) / abs(cpu["metrics"][key])
    ok = loss_gap < 2e-2 if dtype != "float32" else diff < 1e-2 * moved and loss_gap < 1e-3
    return ok, (f"global adapter: max |device - CPU| = {diff:.2e} (training moved it by up to {moved:.2e}); "
                f"{key}: device {device['metrics'][key]:.5f}, CPU float32 {cpu['metrics'][key]:.5f} "
                f"({loss_gap:.2%} apart); agrees: {ok}")


def check_method(method: str, args: argparse.Namespace, cpus: int, on_gpu: bool) -> list[dict]:
    common = [f"model.peft={method}", f"partition.num_clients={args.clients}",
              f"algorithm.clients_per_round={args.clients}", f"algorithm.rounds={args.rounds}", "eval.local=false",
              "algorithm.client_optimizer.name=sgd", f"algorithm.client_optimizer.lr={args.lr}", *args.set]
    key = "eval/global_test/loss"
    gpu_share = ["runtime.num_gpus_per_worker={share}", "ray.num_gpus=1"] if on_gpu else []
    cpu = None
    if args.cpu_reference:
        cpu = in_process_rounds(args.config, [*common, "runtime.num_gpus_per_worker=0", "model.dtype=float32"],
                                args.rounds)
        print(f"[{method}] CPU reference (in-process, float32, {torch.get_num_threads()} threads): round times (s) "
              f"{[round(t, 2) for t in cpu['rounds']]}; {key} {cpu['metrics'][key]:.5f}", flush=True)
    device_common = [*common, f"model.dtype={args.dtype}"]
    # The FLOPs of the timed rounds: one in-process replay on the device, the clients batched.
    counted = in_process_rounds(args.config, [*device_common, "runtime.batch_clients=true",
                                 f"runtime.num_gpus_per_worker={1 if on_gpu else 0}"], args.rounds, count_flops=True)
    init = build_prompt_model(ModelSettings.from_config(load_config(args.config, common).model)).get_prompt()
    moved = (counted["prompt"] - init).abs().max().item()
    device_name = torch.cuda.get_device_name(0) if on_gpu else "CPU"
    peak = args.peak_tflops or peak_tflops(device_name, args.dtype)
    results = []
    for layout in args.layouts.split(","):
        workers, batched = parse_layout(layout)
        share = [s.format(share=1 / workers) for s in gpu_share]
        run = gpu_rounds(args.config, [*device_common, f"runtime.num_workers={workers}", *share,
                          f"runtime.num_cpus_per_worker={min(1.0, (cpus - 1) / workers)}",
                          f"runtime.batch_clients={str(batched).lower()}", "runtime.torch_threads=1",
                          f"ray.num_cpus={cpus}"], args.rounds, sample=on_gpu)
        timed = run["rounds"][1:] or run["rounds"]  # the first round warms kernels and caches up
        median = statistics.median(timed)
        flops = sum(counted["flops"][1:] or counted["flops"])
        achieved = flops / sum(timed) / 1e12
        mfu = achieved / peak if peak else None
        print(f"[{method}] {device_name}, {args.dtype}: {workers} worker actor(s)"
              + (f" x {1 / workers:.3f} GPU" if on_gpu else "")
              + f", {args.clients} clients, batch_clients {batched}; start-up {run['startup']:.1f} s")
        print(f"  round times (s): {[round(t, 2) for t in run['rounds']]}; median after the first {median:.2f} s; "
              f"global evaluation {run['eval_s']:.1f} s")
        for i, s in enumerate(run["stats"]):
            print(f"  worker {i}: {s}")
        if run["sampler"] is not None:
            print(f"  {run['sampler'].report()}")
        print(f"  model FLOPs {flops / len(timed) / 1e12:.3g} TFLOP per round: {achieved:.3g} TFLOP/s"
              + (f", {mfu:.1%} of the {peak:g} TFLOP/s peak (MFU)" if mfu is not None else
                 " (no peak known for this device: --peak-tflops)"))
        ok, text = agreement(args.dtype, run, cpu, moved, key) if cpu is not None else (None, "no CPU reference")
        print(f"  {text}", flush=True)
        results.append({"method": method, "layout": layout, "startup": run["startup"], "round": median,
                        "mfu": mfu, "tflops": achieved, "gpm": run["sampler"].gpm if run["sampler"] else {},
                        "agrees": ok, "cpu_round": statistics.median(cpu["rounds"][1:] or cpu["rounds"]) if cpu
                        else None})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--layouts", default="8,2,2b,1b",
                        help="comma-separated GPU layouts, each a worker count, 'b' for batched clients")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.03, help="the clients' SGD learning rate")
    parser.add_argument("--methods", default="prompt_tuning", help="comma-separated model.peft values")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="the backbone's dtype on the GPU (the CPU reference is float32)")
    parser.add_argument("--no-cpu-reference", dest="cpu_reference", action="store_false",
                        help="skip the CPU reference (minutes per round with 64 SmolLM2 clients)")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense peak for --dtype (default: the table)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="another config override")
    parser.add_argument("--smoke", action="store_true",
                        help="no GPU: the tiny model on synthetic data, every layout on the CPU (checks the script)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    on_gpu = not args.smoke
    args.config = SMOKE_CONFIG if args.smoke else CONFIG
    assert args.smoke or torch.cuda.is_available(), "this check needs an NVIDIA GPU (or --smoke)"
    cpus = max(2, os.cpu_count() or 1)
    results = [row for method in args.methods.split(",") for row in check_method(method, args, cpus, on_gpu)]
    print("\n| method | layout | start-up (s) | round (s) | vs CPU float32 | vs first layout | TFLOP/s | MFU "
          "| SM activity | agrees with CPU |\n|---|---|---|---|---|---|---|---|---|---|")
    for row in results:
        first = next(r for r in results if r["method"] == row["method"])
        vs_cpu = f"{row['cpu_round'] / row['round']:.2f}x" if row["cpu_round"] else "-"
        mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "-"
        sm = f"{row['gpm']['sm_activity']:.0f}%" if row["gpm"] else "-"
        print(f"| {row['method']} | {row['layout']} | {row['startup']:.1f} | {row['round']:.2f} | {vs_cpu} "
              f"| {first['round'] / row['round']:.2f}x | {row['tflops']:.3g} | {mfu} | {sm} | {row['agrees']} |")
    judged = [r["agrees"] for r in results if r["agrees"] is not None]
    print(f"{args.dtype} on the device agrees with the CPU:", all(judged) if judged else "not checked")
    raise SystemExit(0 if all(judged) else 1)


if __name__ == "__main__":
    main()
