"""bfloat16 and float16 backbones against float32: the same run's numbers and its speed.

Runs one config once per ``model.dtype`` (the prompt trains in float32 in every one) and prints
the final global test loss, exact match and ROUGE-L with their differences from float32 (each a
95% bootstrap interval over the global test examples, paired by example), and each run's wall
time as a ratio to the float32 run's. Before the runs, a training step and an
evaluation pass of each dtype are timed alternately (so load from other processes slows every
dtype alike): those ratios are the speed to quote; a whole run's time also holds start-up.

    .venv/bin/python benchmarks/dtype.py configs/smoke.yaml        # tiny model, about a minute
    .venv/bin/python benchmarks/dtype.py configs/quickstart.yaml   # SmolLM2-135M, about an hour on 2 cores
    .venv/bin/python benchmarks/dtype.py configs/quickstart.yaml algorithm.rounds=2   # shorter
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rayfed.config import load_config
from rayfed.data.formatting import tokenize
from rayfed.data.sources import federated_data
from rayfed.experiment import run_experiment
from rayfed.local.evaluation import evaluate
from rayfed.local.training import train_prompt
from rayfed.model.prompt_model import build_prompt_model
from rayfed.outputs.scores import final_scores, paired_change

DTYPES = ("float32", "bfloat16", "float16")


def step_times(cfg_path: str, overrides: list[str], repeats: int, dtypes: tuple[str, ...] = DTYPES,
               ) -> dict[str, dict[str, float]]:
    """Median seconds of one local training step and of one evaluation of the global test set's
    first 32 examples, per dtype, the dtypes taking turns."""
    cfg = load_config(cfg_path, overrides)
    data = federated_data(cfg)
    models = {dt: build_prompt_model(load_config(cfg_path, [*overrides, f"model.dtype={dt}"]).model, seed=cfg.seed)
              for dt in dtypes}
    tok = next(iter(models.values())).tokenizer
    train = tokenize(data.clients[0].train, tok, cfg.data.max_source_tokens, cfg.data.max_target_tokens)
    test = tokenize(data.global_test[:32], tok, cfg.data.max_source_tokens, cfg.data.max_target_tokens)
    prompt = models["float32"].get_prompt()
    a = cfg.algorithm
    times: dict[str, dict[str, list[float]]] = {dt: {"train_step_s": [], "eval_s": []} for dt in dtypes}
    for _ in range(repeats + 1):  # the first pass warms up and is dropped
        for dt, model in models.items():
            start = time.perf_counter()
            train_prompt(model, train, prompt, optimizer=a.client_optimizer, num_steps=2, batch_size=a.batch_size,
                         seed=0)
            times[dt]["train_step_s"].append((time.perf_counter() - start) / 2)
            start = time.perf_counter()
            evaluate(model, test, prompt, batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens)
            times[dt]["eval_s"].append(time.perf_counter() - start)
    return {dt: {k: statistics.median(v[1:]) for k, v in t.items()} for dt, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timing passes per dtype")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated, float32 first (the baseline)")
    args = parser.parse_args()
    dtypes = tuple(args.dtypes.split(","))
    if dtypes[0] != "float32":
        parser.error("--dtypes starts with float32, the baseline every ratio is to")
    torch.set_num_threads(max(1, torch.get_num_threads()))

    steps = step_times(args.config, args.overrides, args.repeats, dtypes)
    print(f"{'dtype':<10} {'train step s':>13} {'vs fp32':>8} {'eval s':>8} {'vs fp32':>8}")
    for dt in dtypes:
        t, base = steps[dt], steps["float32"]
        print(f"{dt:<10} {t['train_step_s']:>13.3f} {t['train_step_s'] / base['train_step_s']:>7.2f}x "
              f"{t['eval_s']:>8.3f} {t['eval_s'] / base['eval_s']:>7.2f}x")

    runs, scores = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for dt in dtypes:
            cfg = load_config(args.config, [*args.overrides, f"model.dtype={dt}", f"output_dir={Path(tmp) / dt}"])
            start = time.perf_counter()
            summary = run_experiment(cfg, loggers=[])
            runs[dt] = {**summary["final"], "seconds": time.perf_counter() - start,
                        "local_rouge_l": summary["final_local"].get("eval/local_test/rouge_l_mean")}
            scores[dt] = {m: final_scores(Path(cfg.output_dir), metric=m) for m in ("loss", "rouge_l")}
    for dt in dtypes:  # the change from float32, paired by example
        runs[dt].update({f"{m}_change": list(paired_change(scores["float32"][m], scores[dt][m]))
                         for m in ("loss", "rouge_l")})
    print(f"\n{'dtype':<10} {'loss':>8} {'change [95%]':>26} {'EM':>7} {'rougeL':>7} {'change [95%]':>26} "
          f"{'local rL':>9} {'run s':>7} {'vs fp32':>8}")
    base = runs["float32"]
    for dt in dtypes:
        r = runs[dt]
        local = "" if r["local_rouge_l"] is None else f"{r['local_rouge_l']:.4f}"
        changes = {m: "{:+.4f} [{:+.4f}, {:+.4f}]".format(*r[f"{m}_change"]) for m in ("loss", "rouge_l")}
        print(f"{dt:<10} {r['loss']:>8.4f} {changes['loss']:>26} {r['exact_match']:>7.4f} "
              f"{r['rouge_l']:>7.4f} {changes['rouge_l']:>26} {local:>9} {r['seconds']:>7.1f} "
              f"{r['seconds'] / base['seconds']:>7.2f}x")
    print(json.dumps({"steps": steps, "runs": runs}, sort_keys=True))


if __name__ == "__main__":
    main()
