"""Hierarchical bootstrap intervals from the units that vary: seeds, then clients, then examples.

A score in rayfed is a mean over clients of each client's mean over its examples (and, across
training seeds, a mean over seeds). The bootstrap resamples in that order: seeds with
replacement; within each drawn seed, its clients with replacement; within each drawn client,
its examples with replacement. Every slot of every level gets its own draw, so a unit drawn
twice is resampled twice. For a paired comparison of two prompts scored on the same examples,
pass the per-example differences (aligned by example id): the example's difficulty cancels.

When every client scores the same examples (the global sets), examples are crossed with clients,
not nested in them: :func:`bootstrap_crossed` resamples clients and examples independently, each
draw's examples shared by every client, so the examples' common difficulty is not averaged away.

Resampling every level is conservative: on simulated federations of 8 clients x 16 nearly binary
scores, the 95% interval covered the true mean in 97% of 300 draws with one seed and 98% with
three (tests/core/test_bootstrap.py). Pure numpy and seeded, so an interval is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Groups = Sequence[Sequence[np.ndarray]]  # [seed][client] -> the client's per-example values


def bootstrap_mean(groups: Groups, *, draws: int = 2000, level: float = 0.95, seed: int = 0,
                   ) -> tuple[float, float, float]:
    """``(estimate, low, high)``: the mean over seeds of the mean over clients of each client's
    example mean, and its percentile interval at ``level``.

    Args:
        groups: ``groups[s][c]``: the values of client ``c``'s examples in seed ``s`` (each non-empty;
            clients may differ in size, seeds in clients).
        draws: Bootstrap replicates.
        level: Coverage of the interval (0.95: the 2.5 and 97.5 percentiles).
        seed: Seed of the resampling generator.

    Raises:
        ValueError: no seed, a seed without clients, or a client without examples.
    """
    if not groups or any(not clients for clients in groups) or any(len(c) == 0 for s in groups for c in s):
        raise ValueError("the bootstrap needs at least one seed, each with clients that each have examples")
    groups = [[np.asarray(c, dtype=np.float64) for c in clients] for clients in groups]
    estimate = float(np.mean([np.mean([c.mean() for c in clients]) for clients in groups]))
    rng = np.random.default_rng(seed)
    n_seeds = len(groups)
    # Each seed's client-level replicates for every (draw, seed slot), then the seed level on top.
    per_seed = np.stack([_client_level(clients, draws * n_seeds, rng).reshape(draws, n_seeds) for clients in groups])
    chosen = rng.integers(n_seeds, size=(draws, n_seeds))
    replicates = per_seed[chosen, np.arange(draws)[:, None], np.arange(n_seeds)[None, :]].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return estimate, float(low), float(high)


def _client_level(clients: list[np.ndarray], draws: int, rng: np.random.Generator) -> np.ndarray:
    """``draws`` replicates of the mean over resampled clients of their resampled example means."""
    n = len(clients)
    # means[j, d, k]: client j's example mean in its own resample for draw d, client slot k.
    means = np.stack([c[rng.integers(len(c), size=(draws, n, len(c)))].mean(axis=-1) for c in clients])
    chosen = rng.integers(n, size=(draws, n))
    return means[chosen, np.arange(draws)[:, None], np.arange(n)[None, :]].mean(axis=1)


def bootstrap_crossed(scores: np.ndarray, *, draws: int = 2000, level: float = 0.95, seed: int = 0,
                      ) -> tuple[float, float, float]:
    """``(estimate, low, high)`` of the mean of ``scores[client, example]`` (every client scored on
    the same examples): each replicate draws clients and examples with replacement, independently.

    Raises:
        ValueError: ``scores`` is not a non-empty 2-D array.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or 0 in scores.shape:
        raise ValueError("bootstrap_crossed needs a non-empty [clients, examples] array")
    rng = np.random.default_rng(seed)
    rows = rng.integers(scores.shape[0], size=(draws, scores.shape[0]))
    cols = rng.integers(scores.shape[1], size=(draws, scores.shape[1]))
    replicates = scores[rows[:, :, None], cols[:, None, :]].mean(axis=(1, 2))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return float(scores.mean()), float(low), float(high)
