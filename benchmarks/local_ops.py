"""Local training and generation against PEFT's own forward and generate, in one run.

rayfed computes the loss with the LM head only at target positions and decodes greedily with
its own KV-cache loop (position ids that ignore left padding). This prints the time of each
against the PEFT baseline on the same batch, and checks that the losses agree.

    .venv/bin/python benchmarks/local_ops.py                       # tiny model, seconds
    .venv/bin/python benchmarks/local_ops.py --model smollm2-135m  # the real model
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from rayfed.config import load_config
from rayfed.data.formatting import collate_generate, collate_train, tokenize
from rayfed.data.synthetic import generate_synthetic
from rayfed.local.evaluation import generate
from rayfed.local.loss import per_example_loss
from rayfed.model.prompt_model import build_prompt_model


def peft_loss(model, batch):
    """Baseline: PEFT's forward with full logits, the same per-example loss."""
    inputs = collate_train(batch, model.pad_id)
    labels = inputs.pop("labels")
    logits = model.peft(**inputs).logits[:, -labels.shape[1]:]
    token_loss = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), labels[:, 1:], reduction="none")
    mask = (labels[:, 1:] != -100).float()
    return (token_loss * mask).sum(1) / mask.sum(1)


def peft_generate(model, batch, max_new_tokens):
    """Baseline: PEFT's generate (HF generate with the prompt prepended)."""
    inputs = collate_generate(batch, model.pad_id)
    limit = min(max_new_tokens, max(len(b.target_ids) for b in batch))
    return model.peft.generate(**inputs, max_new_tokens=limit, do_sample=False, pad_token_id=model.pad_id,
                               eos_token_id=model.tokenizer.eos_token_id)


def timed(fn, repeats):
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = load_config(None, [f"model.name={args.model}"])
    model = build_prompt_model(cfg.model)
    examples = generate_synthetic(args.batch_size, seed=0, tasks=["reverse_words", "add", "topic"])
    batch = tokenize(examples, model.tokenizer, 96, 16)[: args.batch_size]
    model.prompt_parameter.requires_grad_(True)

    def step(loss_fn):
        return lambda: loss_fn(model, batch).mean().backward()

    gap = (per_example_loss(model, batch) - peft_loss(model, batch)).abs().max().item()
    rows = [
        ("train step (forward+backward)", timed(step(peft_loss), args.repeats),
         timed(step(per_example_loss), args.repeats)),
        ("greedy generation", timed(lambda: peft_generate(model, batch, 16), args.repeats),
         timed(lambda: generate(model, batch, 16), args.repeats)),
    ]
    print(f"model {args.model}, batch {len(batch)}, {args.threads} threads; max |loss diff| {gap:.2e}")
    print(f"{'operation':<32}{'PEFT (s)':>10}{'rayfed (s)':>12}{'speed-up':>10}")
    for name, base, ours in rows:
        print(f"{name:<32}{base:>10.3f}{ours:>12.3f}{base / ours:>9.2f}x")


if __name__ == "__main__":
    main()
