"""Local training and evaluation on the tiny model: behaviour a user would notice."""

import torch

from rayfed.algorithms.fedsgd import FedSGD
from rayfed.config import OptimizerConfig
from rayfed.core.aggregation import aggregate_updates
from rayfed.data.formatting import tokenize
from rayfed.data.synthetic import generate_synthetic
from rayfed.local.evaluation import evaluate
from rayfed.local.loss import per_example_loss
from rayfed.local.training import prompt_gradient, train_prompt
from rayfed.model.prompt_model import build_prompt_model
from rayfed.types import ClientUpdate


def setup(tiny_config, n=32):
    cfg = tiny_config()
    model = build_prompt_model(cfg.model, seed=0)
    data = tokenize(generate_synthetic(n, seed=0, tasks=["reverse_words"]), model.tokenizer, 64, 16)
    return cfg, model, data


def test_training_lowers_loss_and_leaves_the_backbone_untouched(tiny_config):
    _, model, data = setup(tiny_config)
    backbone = {k: v.clone() for k, v in model.peft.base_model.state_dict().items()}
    start = model.get_prompt()
    before = per_example_loss(model, data).mean().item()
    prompt, _ = train_prompt(model, data, start, optimizer=OptimizerConfig("adam", 0.05),
                             num_steps=30, batch_size=8, seed=0)
    model.set_prompt(prompt)
    assert per_example_loss(model, data).mean().item() < before - 0.5
    assert not torch.equal(prompt, start)
    assert all(torch.equal(v, backbone[k]) for k, v in model.peft.base_model.state_dict().items()
               if "prompt" not in k)


def test_same_seed_same_prompt(tiny_config):
    _, model, data = setup(tiny_config)
    start = model.get_prompt()
    kw = dict(optimizer=OptimizerConfig("sgd", 0.5), num_steps=5, batch_size=4)
    a, _ = train_prompt(model, data, start, seed=1, **kw)
    b, _ = train_prompt(model, data, start, seed=1, **kw)
    c, _ = train_prompt(model, data, start, seed=2, **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_l2_to_global_keeps_the_local_prompt_closer(tiny_config):
    _, model, data = setup(tiny_config)
    start = model.get_prompt()
    kw = dict(optimizer=OptimizerConfig("sgd", 0.5), num_steps=10, batch_size=8, seed=0)
    free, _ = train_prompt(model, data, start, **kw)
    pulled, _ = train_prompt(model, data, start, l2_reference=start, l2_strength=1.0, **kw)
    assert (pulled - start).norm() < (free - start).norm()


def test_fedsgd_full_batch_equals_one_centralized_step_on_the_union(tiny_config):
    _, model, _ = setup(tiny_config)
    examples = generate_synthetic(9, seed=0, tasks=["copy", "add", "topic"])
    shards = [examples[:5], examples[5:17], examples[17:]]  # unequal sizes: weights matter
    toks = [tokenize(s, model.tokenizer, 64, 16) for s in shards]
    prompt = model.get_prompt()
    algo = FedSGD(batch_size=1000)  # larger than any shard: full-batch gradients
    union_grad, _ = prompt_gradient(model, [x for t in toks for x in t], prompt, batch_size=1000, seed=0)
    for max_rows in (1, None):  # one client per pass, then all three in one pass
        updates = algo.client_updates(model, toks, [prompt] * 3, seeds=[0, 1, 2], max_rows=max_rows)
        ups = [ClientUpdate(cid, grad, len(t), loss) for cid, (t, (grad, loss)) in enumerate(zip(toks, updates))]
        assert torch.allclose(aggregate_updates(ups), union_grad, atol=1e-6, rtol=1e-4)


def test_evaluate_reports_perfect_scores_when_generations_match(tiny_config, monkeypatch):
    _, model, data = setup(tiny_config, n=6)
    import rayfed.local.evaluation as local

    scored = local._score_and_generate

    def perfect(model, rows, *args, **kwargs):  # the real losses, generations equal to the targets
        losses, _ = scored(model, rows, *args, **kwargs)
        return losses, [r.target_text for r in rows]

    monkeypatch.setattr(local, "_score_and_generate", perfect)
    sums = evaluate(model, data, model.get_prompt(), batch_size=4, max_new_tokens=8)
    means = sums.means()
    assert sums.count == 6 and means["exact_match"] == 1.0 and means["rouge_l"] == 1.0
    assert means["loss"] > 0


def test_generation_is_bounded_by_the_target_length(tiny_config):
    _, model, data = setup(tiny_config, n=4)
    from rayfed.local.evaluation import generate

    outputs = generate(model, data, max_new_tokens=3)
    assert len(outputs) == 4
    assert all(len(model.tokenizer(o, add_special_tokens=False)["input_ids"]) <= 3 for o in outputs)


def test_a_row_generates_the_same_text_alone_and_in_a_padded_batch(tiny_config):
    cfg, model, _ = setup(tiny_config)
    from rayfed.local.evaluation import generate
    from rayfed.local.training import train_prompt

    examples = generate_synthetic(4, seed=0, tasks=["copy", "add", "topic"])
    data = tokenize(examples, model.tokenizer, 64, 16)  # sources of different lengths
    prompt, _ = train_prompt(model, data, model.get_prompt(), optimizer=OptimizerConfig("adam", 0.05),
                             num_steps=10, batch_size=4, seed=0)
    model.set_prompt(prompt)
    together = generate(model, data, max_new_tokens=6)
    alone = [generate(model, [d], max_new_tokens=6)[0] for d in data]
    assert len({len(d.source_ids) for d in data}) > 1
    # Alone, a row stops at its own target length; in a batch, at the batch's longest.
    assert all(t.startswith(a) for t, a in zip(together, alone)), (together, alone)
