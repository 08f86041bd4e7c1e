"""The fused evaluate reports exactly what the two-pass reference (loss, then generate) reports."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

import rayfed.local.evaluation as local
from rayfed.config import OptimizerConfig
from rayfed.data.formatting import TokenizedExample, tokenize
from rayfed.data.synthetic import generate_synthetic
from rayfed.local.evaluation import evaluate, evaluate_many, generate
from rayfed.local.loss import per_example_loss
from rayfed.local.training import train_prompt
from rayfed.metrics import exact_match, rouge_l
from rayfed.model.prompt_model import PromptModel, build_prompt_model
from rayfed.types import EvalSums


def reference(model: PromptModel, data: list[TokenizedExample], batch_size: int, max_new_tokens: int,
              ) -> tuple[EvalSums, list[str]]:
    """The previous evaluate: per length-sorted batch, per_example_loss then generate."""
    data = sorted(data, key=lambda ex: (len(ex.source_ids), len(ex.target_ids)))
    total, texts = EvalSums(), []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            batch = data[start:start + batch_size]
            losses, predictions = per_example_loss(model, batch), generate(model, batch, max_new_tokens)
            texts += predictions
            total = total + EvalSums(len(batch), float(losses.sum()),
                                     sum(exact_match(p, b.target_text) for p, b in zip(predictions, batch)),
                                     sum(rouge_l(p, b.target_text) for p, b in zip(predictions, batch)))
    return total, texts


def examples(model: PromptModel) -> list[TokenizedExample]:
    """12 examples of three tasks: sources of 39-64 tokens, targets of 4-16."""
    return tokenize(generate_synthetic(4, seed=0, tasks=["copy", "add", "topic"]), model.tokenizer, 64, 16)


@pytest.mark.parametrize("trained", [False, True], ids=["initial-prompt", "trained-prompt"])
@pytest.mark.parametrize("batch_size", [16, 5], ids=["one-batch", "three-batches"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_evaluate_matches_the_reference(tiny_config, monkeypatch, trained, batch_size, dtype):
    model = build_prompt_model(tiny_config(f"model.dtype={dtype}").model, seed=0)
    data = examples(model)
    assert len({len(d.source_ids) for d in data}) > 1 and len({len(d.target_ids) for d in data}) > 1
    prompt = model.get_prompt()
    if trained:  # some greedy tokens then match the targets, and some rows stop at EOS
        prompt, _ = train_prompt(model, data, prompt, optimizer=OptimizerConfig("adam", 0.05), num_steps=30,
                                 batch_size=8, seed=0)

    texts = []
    score_and_generate = local._score_and_generate

    def spy(*args, **kwargs):
        losses, predictions = score_and_generate(*args, **kwargs)
        texts.extend(predictions)
        return losses, predictions

    monkeypatch.setattr(local, "_score_and_generate", spy)
    new = evaluate(model, data, prompt, batch_size=batch_size, max_new_tokens=8)
    model.set_prompt(prompt)
    old, old_texts = reference(model, data, batch_size, max_new_tokens=8)

    assert texts == old_texts  # same order: both walk the same length-sorted rows
    assert any(texts)
    assert (new.count, new.exact_match, new.rouge_l) == (old.count, old.exact_match, old.rouge_l)
    assert math.isclose(new.loss, old.loss, rel_tol=1e-4 if dtype == "float32" else 1e-2)


def test_pooled_evaluation_of_many_prompts_and_datasets_matches_each_alone(tiny_config, monkeypatch):
    """A client's splits x its prompts (and other clients') share passes, with each pair's numbers
    and each row's generated text."""
    model = build_prompt_model(tiny_config().model, seed=0)
    data = examples(model)
    trained, _ = train_prompt(model, data, model.get_prompt(), optimizer=OptimizerConfig("adam", 0.05),
                              num_steps=30, batch_size=8, seed=0)
    prompts = [model.get_prompt(), trained, 0.5 * (model.get_prompt() + trained)]
    datasets = [data[:5], data[5:], data]
    jobs = [(d, p) for p in prompts for d in datasets]
    generated: list[tuple[tuple[int, ...], str]] = []
    score_and_generate = local._score_and_generate

    def spy(model, rows, *args, **kwargs):
        losses, predictions = score_and_generate(model, rows, *args, **kwargs)
        generated.extend((r.source_ids, p) for r, p in zip(rows, predictions))
        return losses, predictions

    monkeypatch.setattr(local, "_score_and_generate", spy)
    pooled = evaluate_many(model, jobs, batch_size=4, max_new_tokens=8)
    together, generated[:] = list(generated), []
    for (d, p), result in zip(jobs, pooled):
        alone = evaluate(model, d, p, batch_size=4, max_new_tokens=8)
        assert (result.count, result.exact_match, result.rouge_l) == (alone.count, alone.exact_match, alone.rouge_l)
        assert math.isclose(result.loss, alone.loss, rel_tol=1e-5)
    assert Counter(together) == Counter(generated)  # the same text for every (row, prompt)
    assert len({text for _, text in together}) > 3
    assert len({round(r.loss, 3) for r in pooled}) == len(pooled)  # the pairs do score differently


def test_each_example_keeps_its_own_scores_under_its_id(tiny_config):
    """Rows are length-sorted and pooled inside; each example's scores still come back under its
    own id, in the dataset's order: its loss is its loss alone, and its exact match and ROUGE-L
    those of its own generation."""
    model = build_prompt_model(tiny_config().model, seed=0)
    data = examples(model)
    trained, _ = train_prompt(model, data, model.get_prompt(), optimizer=OptimizerConfig("adam", 0.05),
                              num_steps=30, batch_size=8, seed=0)
    ids = [100 + 3 * i for i in range(len(data))]
    (sums,) = evaluate_many(model, [(data, trained)], batch_size=len(data), max_new_tokens=8, ids=[ids])
    assert [e[0] for e in sums.examples] == ids
    model.set_prompt(trained)
    with torch.no_grad():
        alone = [float(per_example_loss(model, [ex])[0]) for ex in data]
    texts = generate(model, sorted(data, key=lambda ex: (len(ex.source_ids), len(ex.target_ids))), 8)
    by_source = dict(zip(sorted(data, key=lambda ex: (len(ex.source_ids), len(ex.target_ids))), texts, strict=True))
    for ex, own_loss, (_, loss, em, rouge) in zip(data, alone, sums.examples, strict=True):
        assert math.isclose(loss, own_loss, rel_tol=1e-4)
        assert (em, rouge) == (exact_match(by_source[ex], ex.target_text), rouge_l(by_source[ex], ex.target_text))
    assert len({e[1] for e in sums.examples}) > 3  # the examples differ: a shuffle would be seen
    assert math.isclose(sum(e[1] for e in sums.examples), sums.loss, rel_tol=1e-9)
