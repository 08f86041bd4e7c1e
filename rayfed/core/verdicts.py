"""Verdicts from bootstrap replicates: reproduced, contradicted or inconclusive, with the
Holm-Bonferroni correction over every primary comparison of a study.

A comparison is a statistic (a paired difference, a frontier gap) with its bootstrap replicates
(rayfed.core.bootstrap.paired_replicates). Its two-sided bootstrap p-value is twice the smaller
tail of the replicates beyond 0, counted conservatively ((k + 1) / (draws + 1)). Holm's
step-down adjusts the p-values of the family; a comparison is decided when its adjusted p is
at most ``alpha``: *reproduced* when the estimate points the way the claim predicts,
*contradicted* when it points the other way. Otherwise it is *inconclusive*. Equivalently, the
interval at the level Holm gives its rank (``1 - alpha / (m - rank + 1)``) excludes 0.

A claim of no difference (``direction="equivalent"``) is reproduced when that interval lies
inside ``(-margin, margin)`` (two one-sided tests), contradicted when it lies wholly beyond
the margin on one side. A claim with several primary comparisons is reproduced when every one
is, contradicted when any is, inconclusive otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

DIRECTIONS = ("greater", "less", "equivalent")
VERDICTS = ("reproduced", "contradicted", "inconclusive")


@dataclass(frozen=True)
class Decision:
    estimate: float
    low: float  # the 95% percentile interval (unadjusted), as reported beside the estimate
    high: float
    p: float  # the p-value Holm adjusts (two-sided; for an equivalence claim, the smaller of its tests)
    p_adjusted: float
    level: float  # the coverage of the interval that decides (Holm's level at this rank)
    decisive_low: float
    decisive_high: float
    verdict: str

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)


# Replicates this close to a threshold are at it: a mean of differences that is exactly 0 (a
# draw of tied examples) comes out as +-1e-17 by the order of a float sum, which differs between
# CPUs (AVX2 and AVX-512 sum in other orders), and would count on one machine and not another.
TIE = 1e-12


def tail_p(replicates: np.ndarray, threshold: float, side: str) -> float:
    """The bootstrap share of ``replicates`` at or below (``side="below"``) or at or above
    ``threshold`` (within :data:`TIE` counts as at it), as (k + 1) / (draws + 1)."""
    k = int((replicates <= threshold + TIE).sum() if side == "below" else (replicates >= threshold - TIE).sum())
    return (k + 1) / (len(replicates) + 1)


def p_value(replicates: np.ndarray, direction: str, margin: float = 0.0) -> float:
    """The p-value of one comparison: two-sided against 0, or for ``equivalent`` the smaller of
    the equivalence test (both one-sided tests against +/- margin) and the test that the
    difference lies beyond the margin (contradiction)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}")
    if direction != "equivalent":
        return min(1.0, 2 * min(tail_p(replicates, 0.0, "below"), tail_p(replicates, 0.0, "above")))
    equivalent = 2 * max(tail_p(replicates, margin, "above"), tail_p(replicates, -margin, "below"))
    beyond = 2 * min(tail_p(replicates, margin, "below"), tail_p(replicates, -margin, "above"))
    return min(1.0, equivalent, beyond)


def holm(p_values: Sequence[float]) -> tuple[list[float], list[int]]:
    """Holm's adjusted p-values, and each comparison's rank (0 = smallest p) in the step-down."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: (p_values[i], i))
    adjusted, running = [0.0] * m, 0.0
    ranks = [0] * m
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i], ranks[i] = running, rank
    return adjusted, ranks


def decide(estimates: Sequence[float], replicates: Sequence[np.ndarray], directions: Sequence[str],
           margins: Sequence[float] | None = None, alpha: float = 0.05) -> list[Decision]:
    """The decision of every comparison of one family (Holm over all of them)."""
    margins = list(margins) if margins is not None else [0.0] * len(estimates)
    ps = [p_value(np.asarray(r), d, m) for r, d, m in zip(replicates, directions, margins, strict=True)]
    adjusted, ranks = holm(ps)
    m = len(ps)
    out = []
    for est, reps, direction, margin, p, p_adj, rank in zip(estimates, replicates, directions, margins, ps,
                                                             adjusted, ranks, strict=True):
        reps = np.asarray(reps)
        level = 1 - alpha / (m - rank)
        low, high = np.percentile(reps, [2.5, 97.5])
        d_low, d_high = np.percentile(reps, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
        out.append(Decision(float(est), float(low), float(high), p, p_adj, level, float(d_low), float(d_high),
                            _verdict(est, reps, p_adj, direction, margin, alpha)))
    return out


def _verdict(estimate: float, replicates: np.ndarray, p_adjusted: float, direction: str, margin: float,
             alpha: float) -> str:
    if p_adjusted > alpha:
        return "inconclusive"
    if direction == "equivalent":  # which of its two tests decided
        equivalent = 2 * max(tail_p(replicates, margin, "above"), tail_p(replicates, -margin, "below"))
        return "reproduced" if equivalent <= p_value(replicates, direction, margin) + 1e-15 else "contradicted"
    return "reproduced" if (estimate > 0) == (direction == "greater") else "contradicted"


def claim_verdict(verdicts: Sequence[str]) -> str:
    """A claim from its primary comparisons: reproduced when all are, contradicted when any is."""
    if not verdicts:
        return "not measured"
    if "contradicted" in verdicts:
        return "contradicted"
    return "reproduced" if all(v == "reproduced" for v in verdicts) else "inconclusive"
