"""Many clients in lockstep (one step for all of them) train exactly as one client at a time."""

import pytest
import torch

from rayfed.algorithms.fedavg import FedAvg
from rayfed.config import OptimizerConfig
from rayfed.data.formatting import TokenizedExample, tokenize
from rayfed.data.synthetic import generate_synthetic
from rayfed.local.lengths import call_overhead_tokens, length_groups
from rayfed.local.loss import per_example_loss
from rayfed.local.training import by_epoch, epoch_job, lockstep_losses, train_lockstep
from rayfed.model.prompt_model import build_prompt_model


@pytest.fixture(scope="module")
def setup(tiny_overrides):
    from rayfed.config import load_config

    cfg = load_config(None, tiny_overrides)
    model = build_prompt_model(cfg.model, seed=0)
    examples = generate_synthetic(12, seed=3, tasks=["copy", "add", "topic", "reverse_words"])
    sizes = [3, 7, 12, 5]  # unequal shards: with local epochs the clients take 1 to 3 steps
    shards, start = [], 0
    for n in sizes:
        shards.append(tokenize(examples[start:start + n], model.tokenizer, 64, 16))
        start += n
    torch.manual_seed(0)
    prompts = [model.get_prompt() + 0.05 * torch.randn_like(model.get_prompt()) for _ in sizes]
    return model, shards, prompts


@pytest.mark.parametrize("optimizer", [OptimizerConfig("sgd", 0.3, momentum=0.9), OptimizerConfig("adam", 0.05),
                                       OptimizerConfig("adamw", 0.05, weight_decay=0.1)])
def test_fedavg_clients_in_lockstep_equal_one_at_a_time(setup, optimizer):
    model, shards, prompts = setup
    algo = FedAvg(optimizer, batch_size=4, local_steps=None, local_epochs=1)
    seeds = [11, 12, 13, 14]
    alone = [algo.client_updates(model, [s], [p], [seed])[0] for s, p, seed in zip(shards, prompts, seeds)]
    for max_rows in (None, 8):  # all four clients in one pass; groups of two
        together = algo.client_updates(model, shards, prompts, seeds, max_rows=max_rows)
        for (d1, l1), (d2, l2) in zip(alone, together):
            assert torch.allclose(d1, d2, atol=1e-6, rtol=1e-5)
            assert l1 == pytest.approx(l2, rel=1e-5)
    assert not torch.allclose(alone[0][0], alone[1][0])  # the clients did train differently


def test_personalization_in_lockstep_equals_one_at_a_time_with_the_l2_pull(setup):
    model, shards, prompts = setup
    kw = dict(epochs=3, keep_epochs=[0, 2, 3], batch_size=4)
    jobs = [epoch_job(s, p, seed=i, **kw) for i, (s, p) in enumerate(zip(shards, prompts))]
    opt = OptimizerConfig("sgd", 0.3)
    alone = [train_lockstep(model, [job], optimizer=opt, l2_strength=0.5)[0] for job in jobs]
    together = train_lockstep(model, jobs, optimizer=opt, l2_strength=0.5)
    for job, a, b in zip(jobs, alone, together):
        (pa, la), (pb, lb) = by_epoch(a, job, 3), by_epoch(b, job, 3)
        assert sorted(pa) == sorted(pb) == [0, 2, 3] and sorted(la) == [1, 2, 3]
        for epoch in pa:
            assert torch.allclose(pa[epoch], pb[epoch], atol=1e-4, rtol=1e-4), (pa[epoch] - pb[epoch]).abs().max()
        assert la == pytest.approx(lb, rel=1e-5)
        assert (pa[3] - pa[0]).abs().max() > 1e-2  # far more than the rounding allowed above


def test_length_groups_minimise_padded_tokens_plus_a_cost_per_call():
    widths = [(1,), (1,), (2,), (10,), (10,)]
    # One pass: 5 + 5 * 10 = 55. Short and long apart: 5 + 3 * 2 + 5 + 2 * 10 = 36. One per row: 49.
    assert length_groups(widths, max_rows=5, overhead=5) == [(0, 3), (3, 5)]
    assert length_groups(widths, max_rows=5, overhead=100) == [(0, 5)]  # calls too dear to split
    # At most 2 rows a group: 3 calls, and 2 * 1 + 2 + 2 * 10 = 24 tokens beats 1 + 2 * 2 + 20 = 25.
    assert length_groups(widths, max_rows=2, overhead=100) == [(0, 2), (2, 3), (3, 5)]
    # Evaluation's layout: a group is as wide as its longest source plus its longest target.
    assert length_groups([(1, 8), (8, 1)], max_rows=2, overhead=5) == [(0, 1), (1, 2)]  # 5+9+5+9 < 5+2*16


def test_rows_of_clients_with_very_different_lengths_run_in_length_groups_and_come_back_in_order(setup):
    model, _, prompts = setup
    short = [TokenizedExample(tuple(range(5, 9)), (9, 10), "") for _ in range(8)]
    long = [TokenizedExample(tuple(5 + i % 20 for i in range(60)), (7, 8, 9), "") for _ in range(4)]
    rows = [short[:4], long, short[4:]]  # client 1's rows are 60 tokens longer than the others'
    widths = sorted((len(r.source_ids) + len(r.target_ids),) for r in short + long)
    assert len(length_groups(widths, len(widths), call_overhead_tokens(model.device))) == 2
    per_row = torch.cat([p.unsqueeze(0).expand(len(r), -1, -1) for p, r in zip(prompts, rows)])
    together = lockstep_losses(model, rows, per_row)
    alone = torch.cat([per_example_loss(model, list(r), per_row[i * 4:(i + 1) * 4]) for i, r in enumerate(rows)])
    assert torch.allclose(together, alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(together[:4], together[4:8])  # different rows, different losses


def test_fedprox_adds_its_proximal_step_to_fedavgs_and_is_fedavg_at_mu_zero(setup):
    """Plain SGD, two local steps: the first starts at the global prompt, where the proximal term's
    gradient is zero, so FedProx's second step differs from FedAvg's by lr * mu * (p1 - p0): its
    delta is FedAvg's minus lr * mu times the one-step delta."""
    from rayfed.algorithms.fedprox import FedProx
    from rayfed.settings import OptimizerSettings

    model, shards, prompts = setup
    sgd, lr, mu = OptimizerSettings.from_config(OptimizerConfig("sgd", 0.3)), 0.3, 2.0
    seeds = [11, 12, 13, 14]
    fedavg = FedAvg(sgd, batch_size=4, local_steps=2, local_epochs=None)
    one_step = FedAvg(sgd, batch_size=4, local_steps=1, local_epochs=None).client_updates(model, shards, prompts, seeds)
    averaged = fedavg.client_updates(model, shards, prompts, seeds)
    proximal = FedProx(sgd, batch_size=4, local_steps=2, local_epochs=None, proximal_mu=mu).client_updates(
        model, shards, prompts, seeds)
    for (d_avg, _), (d1, _), (d_prox, _) in zip(averaged, one_step, proximal, strict=True):
        assert torch.allclose(d_prox, d_avg - lr * mu * d1, atol=1e-6)
        assert not torch.allclose(d_prox, d_avg)
    plain = FedProx(sgd, batch_size=4, local_steps=2, local_epochs=None, proximal_mu=0.0)
    for (a, _), (b, _) in zip(averaged, plain.client_updates(model, shards, prompts, seeds), strict=True):
        assert torch.equal(a, b)


def test_a_fedprox_run_lowers_the_loss_and_mu_belongs_to_fedprox_only(tiny_config):
    from rayfed.config import ConfigError
    from rayfed.experiment import run_experiment

    summary = run_experiment(tiny_config("runtime.executor=local", "algorithm.name=fedprox", "algorithm.rounds=3",
                                         "algorithm.proximal_mu=0.1"), loggers=[])
    assert summary["final"]["loss"] < summary["initial"]["loss"]
    with pytest.raises(ConfigError, match="key 'algorithm.proximal_mu': only fedprox"):
        tiny_config("algorithm.proximal_mu=0.1")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_a_half_precision_backbone_trains_a_float32_prompt_that_lowers_the_loss(tiny_config, tmp_path, dtype):
    from pathlib import Path

    from rayfed.experiment import run_experiment
    from rayfed.model.prompt_model import build_prompt_model
    from rayfed.outputs.checkpoint import load_prompt

    model = build_prompt_model(tiny_config(f"model.dtype={dtype}").model)
    assert {p.dtype for p in model.peft.get_base_model().parameters()} == {getattr(torch, dtype)}
    assert model.prompt_parameter.dtype == torch.float32
    prompts = []
    for attempt in range(2 if dtype == "bfloat16" else 1):  # the same numbers again, in half precision too
        cfg = tiny_config(f"model.dtype={dtype}", "runtime.executor=local", "algorithm.rounds=3", "eval.local=false",
                          f"output_dir={tmp_path / str(attempt)}")
        summary = run_experiment(cfg, loggers=[])
        assert summary["final"]["loss"] < summary["initial"]["loss"] - 0.5
        prompt, _ = load_prompt(Path(cfg.output_dir) / "global_prompt.safetensors")
        assert prompt.dtype == torch.float32
        prompts.append(prompt)
    assert all(torch.equal(prompts[0], p) for p in prompts)


def test_an_unknown_dtype_is_refused_naming_the_key(tiny_config):
    from rayfed.config import ConfigError

    with pytest.raises(ConfigError, match="model.dtype"):
        tiny_config("model.dtype=int8")


def test_ditto_trains_each_clients_own_prompt_pulled_toward_the_global_one(setup):
    """Ditto's personal step is plain training of the client's own prompt with the l2 pull
    lambda / 2 * ||v - global||^2: one SGD step from v at global g moves v by -lr * (grad + lambda (v - g))."""
    from rayfed.algorithms.ditto import Ditto
    from rayfed.local.training import train_prompt
    from rayfed.settings import OptimizerSettings

    model, shards, prompts = setup
    sgd = OptimizerSettings.from_config(OptimizerConfig("sgd", 0.3))
    ditto = Ditto(sgd, batch_size=4, local_steps=2, local_epochs=None, ditto_lambda=2.0)
    own = [p + 0.1 for p in prompts]  # the clients' own prompts, away from the global ones
    out = ditto.personal_updates(model, shards, own, prompts, [21, 22, 23, 24])
    for shard, v, g, seed, (new, _) in zip(shards, own, prompts, [21, 22, 23, 24], out, strict=True):
        expected, _ = train_prompt(model, shard, v, optimizer=sgd, num_steps=2, batch_size=4, seed=seed,
                                   l2_reference=g, l2_strength=2.0)
        assert torch.allclose(new, expected, atol=1e-6)
    far = Ditto(sgd, batch_size=4, local_steps=2, local_epochs=None, ditto_lambda=0.0).personal_updates(
        model, shards, own, prompts, [21, 22, 23, 24])
    for (pulled, _), (free, _), g in zip(out, far, prompts):  # the pull keeps v nearer the global prompt
        assert (pulled - g).norm() < (free - g).norm()


def test_a_ditto_run_trades_global_for_local_score_and_the_pull_tempers_it(tiny_config, tmp_path):
    """One task per client: each client's own prompt fits its data better than the global prompt
    and the global task mix worse; without the pull (lambda 0) it goes further both ways."""
    from rayfed.config import ConfigError
    from rayfed.experiment import run_experiment

    finals = {}
    for lam in (0.1, 0.0):
        summary = run_experiment(tiny_config(
            "runtime.executor=local", "algorithm.name=ditto", "algorithm.rounds=4", f"algorithm.ditto_lambda={lam}",
            "partition.scheme=k_tasks", "partition.units_per_client=1", "partition.unit=task",
            f"output_dir={tmp_path / str(lam)}"), loggers=[])
        assert summary["final"]["loss"] < summary["initial"]["loss"]
        finals[lam] = summary
    own, shared = finals[0.1]["final_ditto"], finals[0.1]["final_local"]
    assert own["ditto/local_test/loss_mean"] < shared["eval/local_test/loss_mean"]
    assert own["ditto/global_test/loss_mean"] > finals[0.1]["final"]["loss"]
    # Every client's own prompt is scored example by example, as the summary's means say.
    import numpy as np

    from rayfed.outputs.scores import DITTO_SCORES, load_example_scores

    rows = load_example_scores(tmp_path / "0.1" / DITTO_SCORES)
    last = (rows["epoch"] == 4) & (rows["split"] == "local_test")
    per_client = [rows["loss"][last & (rows["client_id"] == c)].mean() for c in sorted(set(rows["client_id"][last]))]
    assert len(per_client) == 4 and np.mean(per_client) == pytest.approx(own["ditto/local_test/loss_mean"])
    assert set(rows["split"]) == {"local_test", "global_test"} and set(rows["epoch"]) == set(range(5))
    free = finals[0.0]["final_ditto"]
    assert free["ditto/local_test/loss_mean"] < own["ditto/local_test/loss_mean"]
    assert free["ditto/global_test/loss_mean"] > own["ditto/global_test/loss_mean"]
    quiet = run_experiment(tiny_config("runtime.executor=local", "algorithm.name=ditto", "algorithm.rounds=1",
                                       "eval.local=false", f"output_dir={tmp_path / 'quiet'}"), loggers=[])
    assert "final_ditto" not in quiet and not quiet["clients"]  # eval.local=false: no client is scored
    assert not (tmp_path / "quiet" / DITTO_SCORES).exists()
    with pytest.raises(ConfigError, match="key 'algorithm.ditto_lambda': only ditto"):
        tiny_config("algorithm.ditto_lambda=0.5")
