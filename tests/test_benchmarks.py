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
