"""The benchmarks' own measuring paths, where a wrong pairing would print a plausible number."""

import importlib.util
import statistics
from pathlib import Path

import pytest

from rayfed.experiment import run_experiment
from rayfed.outputs.scores import final_scores

ROOT = Path(__file__).resolve().parents[1]


def benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_serving_a_runs_prompt_per_dtype_scores_the_runs_own_examples(tiny_config):
    """``benchmarks/dtype.py --serve``: float32 reproduces the run's own per-example global test
    scores, and every dtype scores the same example ids, so each change is paired."""
    cfg = tiny_config("runtime.executor=local")
    run_experiment(cfg, loggers=[])
    result = benchmark("dtype").serve_scores(Path(cfg.output_dir), ("float32", "bfloat16"))
    own = final_scores(Path(cfg.output_dir), "global_test", "loss")
    fp32, bf16 = result["float32"]["scores"], result["bfloat16"]["scores"]
    assert set(fp32["global_test"]["loss"]) == set(own) == set(bf16["global_test"]["loss"])
    assert all(fp32["global_test"]["loss"][i] == pytest.approx(own[i], abs=1e-5) for i in own)
    local = set(fp32["local_test"]["loss"])
    assert len(local) == 4 * 4 and local == set(bf16["local_test"]["loss"])  # 4 clients x 4 test examples
    # bf16 rounds the backbone's activations: close to float32's loss, not equal to it.
    gap = statistics.fmean(bf16["global_test"]["loss"][i] - own[i] for i in own)
    assert gap != 0 and abs(gap) < 0.1


def test_the_gpu_check_runs_end_to_end_on_a_cpu_and_counts_the_rounds_flops(tmp_path):
    """``benchmarks/gpu_check.py --smoke``: the script a GPU session runs in one go (the CPU
    reference, the FLOP count, a Ray layout, the agreement check and the table) works, here with
    LoRA on the tiny model, and a Ray worker's rounds equal the in-process reference."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--smoke", "--layouts", "1b", "--rounds", "2",
                           "--clients", "2", "--methods", "lora"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [row] = [line for line in done.stdout.splitlines() if line.startswith("| lora | 1b |")]
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[-1] == "True" and float(cells[6]) > 0  # agrees with the CPU; a positive FLOP rate
    assert "float32 on the device agrees with the CPU: True" in done.stdout


def test_the_gpu_checks_sm_counters_are_read_over_the_training_rounds(monkeypatch):
    """The utilization sampler reads NVML's GPM SM activity and occupancy between a sample taken
    as training starts and one as it ends (a fake NVML here: the counters need a Hopper GPU), and
    labels nvidia-smi's kernel-time share as what it is."""
    import subprocess
    import sys
    import types

    class Metric:
        metricId, value = 0, 0.0

    class MetricsGet:
        def __init__(self):
            self.metrics = [Metric(), Metric()]

    calls = []
    fake = types.SimpleNamespace(
        NVML_GPM_METRICS_GET_VERSION=1, NVML_GPM_METRIC_SM_UTIL=2, NVML_GPM_METRIC_SM_OCCUPANCY=3,
        c_nvmlGpmMetricsGet_t=MetricsGet, nvmlInit=lambda: None, nvmlDeviceGetHandleByIndex=lambda i: "gpu0",
        nvmlGpmQueryDeviceSupport=lambda h: types.SimpleNamespace(isSupportedDevice=1),
        nvmlGpmSampleAlloc=lambda: types.SimpleNamespace(),
        nvmlGpmSampleGet=lambda h, sample: calls.append("sample"), nvmlGpmSampleFree=lambda s: calls.append("free"))

    def metrics_get(get):
        assert get.sample1 is not get.sample2 and get.numMetrics == 2
        for m in get.metrics:
            m.value = {2: 71.5, 3: 33.0}[m.metricId]

    fake.nvmlGpmMetricsGet = metrics_get
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: types.SimpleNamespace(stdout="64, 9000\n"))
    gpu_check = benchmark("gpu_check")
    with gpu_check.UtilizationSampler() as sampler:
        assert calls == ["sample"]  # the first sample, as training starts
    assert calls == ["sample", "sample", "free", "free"]
    assert sampler.gpm == {"sm_activity": 71.5, "sm_occupancy": 33.0}
    report = sampler.report()
    assert "SM activity 72%, SM occupancy 33% (NVML GPM" in report
    assert "nvidia-smi utilization.gpu (time any kernel ran) mean 64%" in report and "9000 MiB" in report
