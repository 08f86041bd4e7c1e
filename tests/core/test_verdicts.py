"""Verdicts: Holm by hand, decisions on hand-made replicates, and the rule calibrated on 1,000
simulated null studies and 1,000 with the effect the design is powered for."""

import numpy as np
import pytest

from rayfed.core.bootstrap import Split, paired_replicates
from rayfed.core.power import (
    Components,
    comparison_power,
    components,
    detectable_effect,
    smallest_design,
    standard_error,
)
from rayfed.core.verdicts import claim_verdict, decide, holm, p_value


def test_holm_by_hand():
    adjusted, ranks = holm([0.01, 0.04, 0.03])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06])  # 3 x 0.01; max(2 x 0.03, 0.03); max(1 x 0.04, 0.06)
    assert ranks == [0, 2, 1]


def test_decisions_on_hand_made_replicates():
    rng = np.random.default_rng(0)
    clear, noise, against = rng.normal(0.1, 0.02, 4000), rng.normal(0.0, 0.05, 4000), rng.normal(-0.1, 0.02, 4000)
    d = decide([0.1, 0.0, -0.1], [clear, noise, against], ["greater", "greater", "greater"])
    assert [x.verdict for x in d] == ["reproduced", "inconclusive", "contradicted"]
    assert d[0].low < 0.1 < d[0].high and d[0].level == pytest.approx(1 - 0.05 / 3)
    assert [x.verdict for x in decide([-0.1], [against], ["less"])] == ["reproduced"]
    # equivalence: inside a 0.05 margin, beyond it, and too wide to tell
    tight, far, wide = rng.normal(0, 0.01, 4000), rng.normal(0.2, 0.01, 4000), rng.normal(0, 0.1, 4000)
    v = decide([0, 0.2, 0], [tight, far, wide], ["equivalent"] * 3, [0.05] * 3)
    assert [x.verdict for x in v] == ["reproduced", "contradicted", "inconclusive"]
    assert claim_verdict(["reproduced", "reproduced"]) == "reproduced"
    assert claim_verdict(["reproduced", "inconclusive"]) == "inconclusive"
    assert claim_verdict(["reproduced", "contradicted"]) == "contradicted"
    with pytest.raises(ValueError, match="direction"):
        p_value(clear, "bigger")


# A design like the full study's, with variance components of the size a pilot measures for a
# paired ROUGE-L difference (nearly binary per example); 6 primary comparisons in 4 claims.
SEEDS, CLIENTS, EXAMPLES = 3, 8, 16
TRUE = Components(seed=0.01 ** 2, client=0.04 ** 2, example=0.35 ** 2, pilot_seeds=3, pilot_clients=8,
                  pilot_examples=16)
CLAIMS = [1, 2, 3, 3, 4, 4]  # the claim of each comparison


def simulate(effects: np.ndarray, rng: np.random.Generator) -> Split:
    sd = np.sqrt([TRUE.seed, TRUE.client, TRUE.example])
    k = len(effects)
    values = (effects[:, None, None, None] + rng.normal(0, sd[0], (k, SEEDS, 1, 1))
              + rng.normal(0, sd[1], (k, SEEDS, CLIENTS, 1)) + rng.normal(0, sd[2], (k, SEEDS, CLIENTS, EXAMPLES)))
    return Split(values, np.full((SEEDS, CLIENTS), EXAMPLES))


def verdicts_of(split: Split, seed: int) -> list[str]:
    reps = paired_replicates({"d": split}, draws=2000, seed=seed)["d"]
    est = split.means()
    return [x.verdict for x in decide(list(est), list(reps.T), ["greater"] * len(est))]


def test_the_verdict_rule_on_1000_null_and_1000_powered_studies():
    rng = np.random.default_rng(2026)
    null = [verdicts_of(simulate(np.zeros(len(CLAIMS)), rng), i) for i in range(1000)]
    decided = np.mean([any(v != "inconclusive" for v in study) for study in null])
    assert decided <= 0.05, decided  # family-wise: any claim reproduced or contradicted

    alpha = 0.05 / len(CLAIMS)  # Holm's strictest step
    effect = [detectable_effect(TRUE, SEEDS, CLIENTS, EXAMPLES, alpha, comparison_power(0.8, CLAIMS.count(c)))
              for c in CLAIMS]
    powered = [verdicts_of(simulate(np.array(effect), rng), 1000 + i) for i in range(1000)]
    for claim in sorted(set(CLAIMS)):
        cols = [i for i, c in enumerate(CLAIMS) if c == claim]
        found = np.mean([claim_verdict([study[i] for i in cols]) == "reproduced" for study in powered])
        assert found >= 0.8, (claim, found, effect)


def test_the_power_formula_is_the_bootstrap_standard_error_and_components_are_recovered():
    rng = np.random.default_rng(1)
    ses, comps = [], []
    for i in range(100):
        split = simulate(np.zeros(1), rng)
        ses.append(paired_replicates({"d": split}, draws=1000, seed=i)["d"][:, 0].std())
        comps.append(components([[split.values[0, s, c] for c in range(CLIENTS)] for s in range(SEEDS)]))
    assert np.mean(ses) == pytest.approx(standard_error(TRUE, SEEDS, CLIENTS, EXAMPLES), rel=0.1)
    assert np.mean([c.example for c in comps]) == pytest.approx(TRUE.example, rel=0.05)
    assert np.mean([c.client for c in comps]) == pytest.approx(TRUE.client, rel=0.5)
    assert components([[np.array([0.0, 1.0])]]).seed is None  # one seed: unknown
    # more of every unit: a smaller detectable effect; the cheapest design that reaches an effect
    assert detectable_effect(TRUE, 6, 16, 32, 0.01) < detectable_effect(TRUE, 3, 8, 16, 0.01)
    designs = [(s, c, n) for s in (3, 5, 10) for c in (8, 16) for n in (16, 32, 64)]
    best = smallest_design(TRUE, 0.1, 0.01, designs, cost=lambda d: d[0] * d[1] * d[2])
    assert best is not None and detectable_effect(TRUE, *best, 0.01) <= 0.1
    assert all(detectable_effect(TRUE, *d, 0.01) > 0.1 for d in designs if d[0] * d[1] * d[2] < np.prod(best))


def test_a_comparison_does_not_depend_on_the_order_of_a_float_sum():
    """Tied examples make exactly equal point means and exactly zero differences; a float sum in
    another order (another CPU's BLAS) turns them into +-1e-17. Perturbing every replicate mean
    by ten times that (1e-15, relative) changes neither a frontier statistic nor a p-value."""
    from rayfed.study.config import ComparisonConfig, PointsConfig
    from rayfed.study.primary import statistic

    rng = np.random.default_rng(3)
    # 3 seeds x 4 clients x 6 examples of 4 points, ROUGE-L-like scores on a coarse grid: ties everywhere.
    values = rng.choice([0.0, 0.25, 0.5, 1.0], size=(4, 3, 4, 6))
    values[1] = values[0]  # point 1 ties point 0 on every example
    split = Split(values, np.full((3, 4), 6))
    replicates = paired_replicates({"local_test": split,
                                    "global_test": Split(values[..., ::-1].copy(), split.sizes)},  # the same ties
                                   draws=1000, seed=0)
    frontier = ComparisonConfig(kind="frontier", a=PointsConfig(), b=PointsConfig())
    difference = ComparisonConfig(kind="difference", split="global_test")
    for c, a, b in ((frontier, [0, 1], [2, 3]), (difference, [0], [1])):
        exact = statistic(c, replicates, a, b, [])
        noisy = statistic(c, {k: v * (1 + 1e-15 * rng.standard_normal(v.shape)) for k, v in replicates.items()},
                          a, b, [])
        assert np.array_equal(exact, noisy)
        assert p_value(exact, "greater") == p_value(noisy, "greater")
    assert (statistic(difference, replicates, [0], [1], []) == 0).all()  # the tie: p is 1, on any CPU
    assert p_value(statistic(difference, replicates, [0], [1], []) + 1e-17, "greater") == 1.0
