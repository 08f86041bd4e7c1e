"""Power before the run: how large a study must be to see an effect.

From a pilot's per-example paired differences (``[seed][client] -> examples``), the method of
moments gives three variance components: between seeds (``seed``: what changes with the training
seed, here the partition too), between clients within a seed (``client``) and between examples
within a client (``example``). The standard error of a study's mean difference then follows for
any design (seeds S, clients C, examples per client n). It is the one the verdict's nested
bootstrap (rayfed.core.bootstrap) sees, which resamples every level and so counts the lower
levels' noise again inside each upper level:

    se^2 = [ (S-1)/S (seed + client/C + example/(C n))
             + (C-1)/C (client + example/n) / C
             + (n-1)/n example / (C n) ] / S

A one-seed study's bootstrap cannot see the seed level at all; the formula says so (its first
term is 0), which is why a power computation needs the seed component from somewhere.
The minimum detectable effect at significance ``alpha`` (two-sided) and power ``power`` is
``(z(1 - alpha/2) + z(power)) * se``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np


@dataclass(frozen=True)
class Components:
    seed: float | None  # None: the pilot had one seed
    client: float
    example: float
    pilot_seeds: int
    pilot_clients: float  # mean per seed
    pilot_examples: float  # mean per client

    def as_dict(self) -> dict:
        return asdict(self)


def components(groups: Sequence[Sequence[np.ndarray]]) -> Components:
    """Variance components of ``groups[s][c]`` (a client's per-example values in seed ``s``) by
    the method of moments; a component the data cannot tell from the level below is 0."""
    groups = [[np.asarray(c, dtype=np.float64) for c in clients] for clients in groups]
    sized = [c for clients in groups for c in clients if len(c) > 1]
    if not sized:
        raise ValueError("components need clients with two or more examples")
    example = float(np.mean([c.var(ddof=1) for c in sized]))
    n = float(np.mean([len(c) for clients in groups for c in clients]))
    within = [np.var([c.mean() for c in clients], ddof=1) for clients in groups if len(clients) > 1]
    client = max(0.0, float(np.mean(within)) - example / n) if within else 0.0
    n_clients = float(np.mean([len(clients) for clients in groups]))
    seed = None
    if len(groups) > 1:
        seed_means = [np.mean([c.mean() for c in clients]) for clients in groups]
        seed = max(0.0, float(np.var(seed_means, ddof=1)) - client / n_clients - example / (n_clients * n))
    return Components(seed, client, example, len(groups), n_clients, n)


def standard_error(c: Components, seeds: int, clients: int, examples: int, seed_variance: float | None = None) -> float:
    """The bootstrap standard error of the mean difference of a design (see the module text);
    ``seed_variance`` replaces an unknown (one-seed pilot) or known seed component."""
    seed = seed_variance if seed_variance is not None else (c.seed or 0.0)
    S, C, n = seeds, clients, examples
    top = (S - 1) / S * (seed + c.client / C + c.example / (C * n))
    mid = (C - 1) / C * (c.client + c.example / n) / C
    low = (n - 1) / n * c.example / (C * n)
    return math.sqrt((top + mid + low) / S)


def z_factor(alpha: float, power: float = 0.8) -> float:
    nd = NormalDist()
    return nd.inv_cdf(1 - alpha / 2) + nd.inv_cdf(power)


def detectable_effect(c: Components, seeds: int, clients: int, examples: int, alpha: float, power: float = 0.8,
                      seed_variance: float | None = None, scale: float = 1.0) -> float:
    """The smallest true difference the design finds with probability ``power`` at ``alpha``.
    ``scale`` multiplies the standard error: for a statistic that is not a mean of per-example
    differences (a frontier gap), its measured bootstrap standard error over that of the linear
    stand-in ``c`` describes, in the pilot's design."""
    return z_factor(alpha, power) * scale * standard_error(c, seeds, clients, examples, seed_variance)


def smallest_design(c: Components, effect: float, alpha: float, designs: Iterable[tuple[int, int, int]],
                    cost: Callable[[tuple[int, int, int]], float], power: float = 0.8,
                    seed_variance: float | None = None, scale: float = 1.0) -> tuple[int, int, int] | None:
    """The cheapest ``(seeds, clients, examples)`` among ``designs`` (by ``cost(design)``) whose
    detectable effect is at most ``effect``; None if none is."""
    able = [d for d in designs if detectable_effect(c, *d, alpha, power, seed_variance, scale) <= effect]
    return min(able, key=cost) if able else None


def comparison_power(claim_power: float, comparisons: int) -> float:
    """The power each of a claim's ``comparisons`` needs so that all of them are found with
    probability at least ``claim_power`` (a union bound over their misses)."""
    return 1 - (1 - claim_power) / comparisons
