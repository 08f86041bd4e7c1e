"""rayfed.core.bootstrap: intervals that cover the truth at their level and respect the hierarchy."""

import numpy as np
import pytest

from rayfed.core.bootstrap import bootstrap_crossed, bootstrap_mean


def federation(rng: np.random.Generator, clients: int = 8, examples: int = 16, spread: float = 0.15,
               mean: float = 0.4) -> list[np.ndarray]:
    """Nearly binary per-example scores (ROUGE-L on short targets) around client-specific rates."""
    rates = np.clip(mean + spread * rng.standard_normal(clients), 0.02, 0.98)
    return [(rng.random(examples) < r).astype(float) for r in rates]


def test_the_95_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    covered = 0
    for i in range(200):
        seeds = [federation(rng) for _ in range(3)]
        _, low, high = bootstrap_mean(seeds, draws=400, seed=i)
        covered += low <= 0.4 <= high  # the mean the clients' rates are drawn around
    assert 0.88 <= covered / 200 <= 0.995


def test_the_estimate_is_the_mean_of_client_means_and_constant_data_has_no_width():
    values = [[np.array([1.0, 0.0]), np.array([1.0, 1.0, 1.0, 0.0])]]
    estimate, _, _ = bootstrap_mean(values, draws=50)
    assert estimate == pytest.approx((0.5 + 0.75) / 2)
    assert bootstrap_mean([[np.full(4, 0.3), np.full(2, 0.3)]], draws=50) == pytest.approx((0.3, 0.3, 0.3))


def test_clients_are_a_level_of_their_own():
    """With heterogeneous clients, pooling their examples as if independent understates the
    uncertainty: the hierarchical interval is wider than the pooled one."""
    rng = np.random.default_rng(1)
    clients = federation(rng, spread=0.3)
    _, low, high = bootstrap_mean([clients], draws=2000)
    _, pooled_low, pooled_high = bootstrap_mean([[np.concatenate(clients)]], draws=2000)
    assert high - low > 1.3 * (pooled_high - pooled_low)


def test_seeded_and_checked():
    rng = np.random.default_rng(2)
    seeds = [federation(rng) for _ in range(2)]
    assert bootstrap_mean(seeds, seed=5) == bootstrap_mean(seeds, seed=5)
    with pytest.raises(ValueError):
        bootstrap_mean([[np.array([])]])
    with pytest.raises(ValueError):
        bootstrap_mean([])


def test_shared_examples_are_resampled_once_for_every_client():
    """Every client scored on the same examples, each example with a difficulty of its own: the
    crossed interval covers the truth about 95% of the time, while treating the examples as each
    client's own (nested) would be too narrow."""
    rng = np.random.default_rng(3)
    covered = narrower = 0
    for i in range(200):
        difficulty = rng.standard_normal(32)  # shared by every client
        skill = 0.3 * rng.standard_normal(8)
        scores = (rng.random((8, 32)) < 1 / (1 + np.exp(-(skill[:, None] - difficulty[None, :])))).astype(float)
        estimate, low, high = bootstrap_crossed(scores, draws=400, seed=i)
        assert estimate == pytest.approx(scores.mean())
        covered += low <= 0.5 <= high  # skill and difficulty are symmetric around 0: the true rate is 0.5
        _, nested_low, nested_high = bootstrap_mean([list(scores)], draws=400, seed=i)
        narrower += (nested_high - nested_low) < (high - low)
    assert 0.88 <= covered / 200 <= 0.995
    assert narrower / 200 > 0.9
