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

``--serve RUN_DIR`` instead scores a finished run's global prompt (trained in float32) with the
backbone in each dtype, on the global test set and every client's test split: what serving the
same prompt in half precision changes, paired by example, and each dtype's evaluation time. It
costs an evaluation per dtype, not a run, so it fits where emulated half precision makes a
whole run too slow.

    .venv/bin/python benchmarks/dtype.py --serve outputs/quickstart --dtypes float32,bfloat16
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rayfed.config import load_config, replace_keys
from rayfed.data.formatting import tokenize
from rayfed.data.sources import federated_data
from rayfed.experiment import run_experiment
from rayfed.local.evaluation import evaluate
from rayfed.local.training import train_prompt
from rayfed.model.prompt_model import build_prompt_model
from rayfed.outputs.checkpoint import load_prompt
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


def serve_scores(run_dir: Path, dtypes: tuple[str, ...]) -> dict[str, dict]:
    """Per dtype: seconds of the evaluation and each example's scores, by split and metric,
    keyed by example id (``(client, position)`` on the clients' test splits)."""
    cfg = load_config(run_dir / "config.yaml")
    prompt = load_prompt(run_dir / "global_prompt.safetensors")[0]
    data = federated_data(cfg)
    out: dict[str, dict] = {}
    sets: dict[str, list] = {}  # split -> [(client or None, tokenized examples)], tokenized once for every dtype
    for dt in dtypes:
        model = build_prompt_model(replace_keys(cfg, {"model.dtype": dt}).model, seed=cfg.seed)
        if not sets:
            parts = {"global_test": [(None, data.global_test)],
                     "local_test": list(enumerate(c.test for c in data.clients))}
            sets = {split: [(c, tokenize(ex, model.tokenizer, cfg.data.max_source_tokens, cfg.data.max_target_tokens))
                            for c, ex in rows] for split, rows in parts.items()}
        scores: dict[str, dict[str, dict]] = {}
        start = time.perf_counter()
        for split, parts in sets.items():
            scores[split] = {"loss": {}, "rouge_l": {}}
            for client, tokens in parts:
                sums = evaluate(model, tokens, prompt, batch_size=cfg.eval.batch_size,
                                max_new_tokens=cfg.eval.max_new_tokens)
                for i, loss, _, rouge in sums.examples:
                    key = i if client is None else (client, i)
                    scores[split]["loss"][key], scores[split]["rouge_l"][key] = loss, rouge
        out[dt] = {"seconds": time.perf_counter() - start, "scores": scores}
    return out


def serve(run_dir: Path, dtypes: tuple[str, ...]) -> None:
    """Print :func:`serve_scores`: each dtype's means, changes from float32 [95%] and time."""
    result = serve_scores(run_dir, dtypes)
    base = result["float32"]
    own = final_scores(run_dir, "global_test", "loss")  # the run's own float32 scores: this path must agree
    agree = max(abs(own[i] - base["scores"]["global_test"]["loss"][i]) for i in own)
    print(f"float32 here vs the run's own global test losses: largest difference {agree:.2e}")
    print(f"{'dtype':<10} {'split':<12} {'loss':>7} {'change [95%]':>26} {'rougeL':>7} {'change [95%]':>26} "
          f"{'eval s':>7} {'vs fp32':>8}")
    rows = {}
    for dt in dtypes:
        r = result[dt]
        for split in ("global_test", "local_test"):
            s, b = r["scores"][split], base["scores"][split]
            mean = {m: statistics.fmean(s[m].values()) for m in ("loss", "rouge_l")}
            change = {m: paired_change(b[m], s[m]) for m in ("loss", "rouge_l")}
            text = {m: "{:+.4f} [{:+.4f}, {:+.4f}]".format(*change[m]) for m in change}
            print(f"{dt:<10} {split:<12} {mean['loss']:>7.4f} {text['loss']:>26} {mean['rouge_l']:>7.4f} "
                  f"{text['rouge_l']:>26} {r['seconds']:>7.1f} {r['seconds'] / base['seconds']:>7.2f}x")
            rows[f"{dt}/{split}"] = {**mean, **{f"{m}_change": list(c) for m, c in change.items()},
                                     "examples": len(s["loss"])}
        rows[f"{dt}/seconds"] = r["seconds"]
    print(json.dumps({"run": str(run_dir), "largest_fp32_difference": agree, **rows}, sort_keys=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timing passes per dtype")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated, float32 first (the baseline)")
    parser.add_argument("--serve", metavar="RUN_DIR", type=Path,
                        help="score a finished run's global prompt with the backbone in each dtype (no training)")
    args = parser.parse_args()
    dtypes = tuple(args.dtypes.split(","))
    if dtypes[0] != "float32":
        parser.error("--dtypes starts with float32, the baseline every ratio is to")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.serve:
        serve(args.serve, dtypes)
        return
    if not args.config:
        parser.error("give a CONFIG to run, or --serve RUN_DIR")

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
