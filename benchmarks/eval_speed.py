"""Evaluation speed: rayfed's fused, pooled evaluation against the two-pass reference, in one run.

Evaluation used to run, per batch, a teacher-forced forward for the loss and then ``generate``
(a second prefill of the same sources, then a KV-cache greedy loop). ``rayfed.local.evaluation`` gets
both from one forward per example, and ``evaluate_many`` pools the rows of many (split, prompt)
pairs into full passes. This times three paths on the quickstart evaluation workload (the
initial prompt on the global test set and on every client's test split, the config's
eval.batch_size and eval.max_new_tokens) and checks that they report the same numbers:

- old: per batch, ``per_example_loss`` then ``generate``;
- fused: ``evaluate`` on one split at a time (a worker hosting one client);
- pooled: as a worker hosting every client evaluates (``runtime.num_workers=1``,
  ``runtime.batch_clients=true``): the global set in its fixed pieces, the clients' splits pooled.

    .venv/bin/python benchmarks/eval_speed.py                        # SmolLM2-135M, a few minutes
    .venv/bin/python benchmarks/eval_speed.py --model tiny-llama     # synthetic data, seconds

The paths run alternately, so load from other processes slows both alike; the table gives the
best and the mean pass of each.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch

from rayfed.config import load_config
from rayfed.data.formatting import TokenizedExample, tokenize
from rayfed.data.sources import federated_data
from rayfed.local.evaluation import evaluate, evaluate_many, generate
from rayfed.local.loss import per_example_loss
from rayfed.metrics import exact_match, rouge_l
from rayfed.model.prompt_model import TINY_LLAMA, PromptModel, build_prompt_model
from rayfed.types import EvalSums

Evaluate = Callable[..., EvalSums]


@torch.no_grad()
def reference_evaluate(model: PromptModel, data: list[TokenizedExample], prompt: torch.Tensor, *,
                       batch_size: int, max_new_tokens: int) -> EvalSums:
    """The previous ``evaluate``: per length-sorted batch, ``per_example_loss`` then ``generate``."""
    model.set_prompt(prompt)
    total = EvalSums()
    data = sorted(data, key=lambda ex: (len(ex.source_ids), len(ex.target_ids)))
    for start in range(0, len(data), batch_size):
        batch = data[start:start + batch_size]
        losses = per_example_loss(model, batch)
        predictions = generate(model, batch, max_new_tokens)
        total = total + EvalSums(
            len(batch), float(losses.sum()),
            sum(exact_match(p, b.target_text) for p, b in zip(predictions, batch)),
            sum(rouge_l(p, b.target_text) for p, b in zip(predictions, batch)))
    return total


Path = Callable[[PromptModel, list[list[TokenizedExample]], torch.Tensor, int, int], list[EvalSums]]


def one_at_a_time(fn: Evaluate) -> Path:
    def run(model, splits, prompt, batch_size, max_new_tokens):
        return [fn(model, s, prompt, batch_size=batch_size, max_new_tokens=max_new_tokens) for s in splits]
    return run


def pooled(n_pieces: int) -> Path:
    """The first ``n_pieces`` splits are the global set's pieces, each alone (as
    ClientWorker.evaluate_global); the clients' splits go in one evaluate_many (as
    ClientWorker.each("evaluate_client") with batch_clients)."""
    def run(model, splits, prompt, batch_size, max_new_tokens):
        kw = dict(batch_size=batch_size, max_new_tokens=max_new_tokens)
        return ([evaluate(model, piece, prompt, **kw) for piece in splits[:n_pieces]]
                + evaluate_many(model, [(s, prompt) for s in splits[n_pieces:]], **kw))
    return run


def run_all(fn: Path, model: PromptModel, splits: list[list[TokenizedExample]], prompt: torch.Tensor,
            batch_size: int, max_new_tokens: int) -> tuple[float, list[EvalSums]]:
    """Evaluate ``prompt`` on every split with ``fn``; return the seconds taken and the sums."""
    start = time.perf_counter()
    sums = fn(model, splits, prompt, batch_size, max_new_tokens)
    return time.perf_counter() - start, sums


def agree(old: EvalSums, new: EvalSums) -> bool:
    """Same counts, exact match and ROUGE-L sums (same generated texts); loss within rtol 1e-4."""
    return (old.count == new.count and old.exact_match == new.exact_match and old.rouge_l == new.rouge_l
            and math.isclose(old.loss, new.loss, rel_tol=1e-4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None,
                        help="model.name (default: the config's); tiny-llama uses configs/smoke.yaml")
    parser.add_argument("--config", default=None,
                        help="experiment config (default: configs/quickstart.yaml, or smoke.yaml for tiny-llama)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per path, after one warm-up pass")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = args.config or ("configs/smoke.yaml" if args.model == TINY_LLAMA else "configs/quickstart.yaml")
    cfg = load_config(config, [f"model.name={args.model}"] if args.model else [])
    data = federated_data(cfg)
    model = build_prompt_model(cfg.model, seed=cfg.seed)
    d, e = cfg.data, cfg.eval

    def tok(examples) -> list[TokenizedExample]:
        # As rayfed/runtime/worker.py tokenizes each split.
        return tokenize(examples, model.tokenizer, d.max_source_tokens, d.max_target_tokens)

    # The global set in its pieces of eval.batch_size, as every path evaluates it in a run.
    glob = tok(data.global_test)
    pieces = [glob[i:i + e.batch_size] for i in range(0, len(glob), e.batch_size)]
    splits = pieces + [tok(c.test) for c in data.clients]
    prompt = model.get_prompt()
    paths: dict[str, Path] = {"old (loss + generate)": one_at_a_time(reference_evaluate),
                              "fused (split by split)": one_at_a_time(evaluate), "fused + pooled": pooled(len(pieces))}
    times: dict[str, list[float]] = {name: [] for name in paths}
    sums: dict[str, list[EvalSums]] = {}
    for rep in range(args.repeats + 1):
        # Alternate which path goes first, so drifting background load favours neither.
        for name in list(paths)[:: 1 if rep % 2 else -1]:
            seconds, sums[name] = run_all(paths[name], model, splits, prompt, e.batch_size, e.max_new_tokens)
            if rep > 0:  # the first pass is a warm-up
                times[name].append(seconds)
            print(f"pass {rep}{' (warm-up)' if rep == 0 else ''}: {name} {seconds:.2f} s", flush=True)

    old = sums[next(iter(paths))]
    ok = all(agree(a, b) for name in paths for a, b in zip(old, sums[name]))
    n_examples = sum(len(s) for s in splits)
    print(f"model {cfg.model.name} ({config}), {len(pieces)} global pieces + {len(splits) - len(pieces)} client "
          f"splits / {n_examples} examples, "
          f"eval batch {e.batch_size}, max_new_tokens {e.max_new_tokens}, {args.threads} threads, "
          f"{args.repeats} timed passes")
    best_old = min(times[next(iter(paths))])
    print(f"{'path':<26}{'best (s)':>10}{'mean (s)':>10}{'speed-up':>9}")
    for name, ts in times.items():
        print(f"{name:<26}{min(ts):>10.2f}{statistics.mean(ts):>10.2f}{best_old / min(ts):>8.2f}x")
    for name, s in sums.items():
        t = sum(s, EvalSums())
        print(f"{name:<26}count {t.count}  loss {t.loss:.6f}  exact_match {t.exact_match:g}  rouge_l {t.rouge_l:.6f}")
    print("EvalSums agree on every piece and split (counts, exact match, ROUGE-L equal; loss rtol 1e-4):", ok)
    assert ok, sums


if __name__ == "__main__":
    main()
