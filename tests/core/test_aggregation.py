import itertools

import pytest
import torch

from rayfed.config import OptimizerConfig
from rayfed.core.aggregation import aggregate_updates, weighted_mean
from rayfed.core.interpolation import interpolate
from rayfed.core.regularization import l2_penalty
from rayfed.core.server_optimizer import ServerOptimizer
from rayfed.types import ClientUpdate


def test_weighted_mean_matches_hand_computed_value():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([4.0, -1.0])
    # weights 1 and 3: (1*[1,2] + 3*[4,-1]) / 4 = [13/4, -1/4]
    assert torch.allclose(weighted_mean([a, b], [1, 3]), torch.tensor([3.25, -0.25]))


def test_aggregation_ignores_arrival_order():
    """Float addition is not associative: with a large and a small delta, the sum depends on the
    order it is taken in (1/3 survives only if it is added after the large terms cancel), so any
    arrival order must give the client-id order's result bit for bit."""
    deltas = {0: 1.0, 1: 1e17, 2: -1e17}
    ups = {c: ClientUpdate(c, torch.tensor([d], dtype=torch.float64), 1, 0.0) for c, d in deltas.items()}
    results = [aggregate_updates([ups[c] for c in order]) for order in itertools.permutations(ups)]
    assert len({r.item() for r in results}) == 1
    assert torch.equal(results[0], aggregate_updates([ups[0], ups[1], ups[2]]))


def test_weighted_mean_rejects_empty_and_zero_weights():
    with pytest.raises(ValueError):
        weighted_mean([], [])
    with pytest.raises(ValueError):
        weighted_mean([torch.ones(2)], [0])


def test_fedavg_server_step_with_lr_one_is_the_weighted_average_of_local_prompts():
    global_prompt = torch.zeros(2, 3)
    locals_ = {0: torch.full((2, 3), 1.0), 1: torch.full((2, 3), 4.0)}
    ups = [ClientUpdate(c, global_prompt - p, n, 0.0) for (c, p), n in zip(locals_.items(), [2, 1])]
    server = ServerOptimizer(global_prompt, OptimizerConfig("sgd", 1.0))
    new = server.step(aggregate_updates(ups))
    assert torch.allclose(new, torch.full((2, 3), (2 * 1.0 + 1 * 4.0) / 3))


def test_server_momentum_accumulates():
    server = ServerOptimizer(torch.zeros(1), OptimizerConfig("sgd", 1.0, momentum=0.5))
    server.step(torch.ones(1))  # v=1, p=-1
    assert torch.allclose(server.step(torch.ones(1)), torch.tensor([-2.5]))  # v=1.5, p=-2.5


def test_interpolation_endpoints_and_midpoint():
    g, loc = torch.zeros(2), torch.tensor([2.0, 4.0])
    assert torch.equal(interpolate(g, loc, 0.0), g)
    assert torch.equal(interpolate(g, loc, 1.0), loc)
    assert torch.allclose(interpolate(g, loc, 0.25), torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError):
        interpolate(g, loc, 1.5)


def test_l2_penalty_gradient_pulls_toward_reference():
    p = torch.tensor([1.0, -2.0], requires_grad=True)
    ref = torch.tensor([0.0, 0.0])
    l2_penalty(p, ref, 0.5).backward()
    assert torch.allclose(p.grad, 0.5 * (p.detach() - ref))
