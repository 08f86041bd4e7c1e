"""Split a pool of examples into a global test set and per-client train/val/test shards.

Heterogeneity is controlled over *units* (task categories or tasks): each client draws a mixture
over units (Dirichlet with ``concentration``, ``k`` units uniformly, or the pool's own mix
for IID) and fills its shard example by example from the units' pools without replacement, so a
partition never uses an example twice.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from rayfed.errors import UserError
from rayfed.types import Example


@dataclass(frozen=True)
class ClientData:
    """One client's shard."""

    client_id: int
    train: tuple[Example, ...]
    val: tuple[Example, ...]
    test: tuple[Example, ...]


@dataclass(frozen=True)
class FederatedData:
    """Every client's shard plus the global test and validation sets that span all tasks."""

    clients: tuple[ClientData, ...]
    global_test: tuple[Example, ...]
    unit: str  # "category" or "task": what the histograms and heterogeneity are over
    global_val: tuple[Example, ...] = ()  # built like global_test from disjoint examples


def global_sets_of(data: FederatedData) -> dict[str, list[Example]]:
    """The global evaluation sets by split name (``global_val`` only when it is non-empty)."""
    sets = {"global_test": list(data.global_test)}
    if data.global_val:
        sets["global_val"] = list(data.global_val)
    return sets


def unit_of(example: Example, unit: str) -> str:
    return example.category if unit == "category" else example.task


def partition(
    examples: list[Example],
    *,
    num_clients: int,
    scheme: str,
    unit: str,
    concentration: float,
    units_per_client: int,
    train_examples: int,
    val_examples: int,
    test_examples: int,
    global_test_examples: int,
    seed: int,
    global_val_examples: int = 0,
) -> FederatedData:
    """Partition ``examples`` deterministically from ``seed``.

    Raises:
        ValueError: when the pool is too small for the requested sizes (names the keys).
    """
    rng = np.random.default_rng([seed, 0x9A27])  # one generator, drawn from in this order throughout
    by_task: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        by_task[ex.task].append(ex)
    for task in sorted(by_task):
        order = rng.permutation(len(by_task[task]))
        by_task[task] = [by_task[task][i] for i in order]

    # Global test first, then global validation, each round-robin over tasks so every task is
    # represented evenly (the test set does not depend on whether a validation set is drawn).
    tasks = sorted(by_task)
    global_test = _round_robin(by_task, tasks, global_test_examples)
    global_val = _round_robin(by_task, tasks, global_val_examples)

    pools: dict[str, list[Example]] = defaultdict(list)
    for task in tasks:
        for ex in by_task[task]:
            pools[unit_of(ex, unit)].append(ex)
    per_client = train_examples + val_examples + test_examples
    available = sum(len(v) for v in pools.values())
    if available < per_client * num_clients:
        raise UserError(
            f"the data holds {available} examples after the global test and validation sets, but partition.num_clients "
            f"x (train_examples + val_examples + test_examples) = {num_clients} x {per_client} are needed; "
            f"lower those or raise data.max_examples_per_task")
    for pool in pools.values():  # pools mix tasks; shuffle so draws are not task-ordered
        rng.shuffle(pool)  # type: ignore[arg-type]

    units = sorted(pools)
    sizes = np.array([len(pools[u]) for u in units], dtype=float)
    clients = []
    for client_id in range(num_clients):
        weights = _mixture(scheme, len(units), concentration, units_per_client, sizes, rng)
        shard = _draw_shard(pools, units, weights, per_client, rng)
        clients.append(ClientData(
            client_id,
            tuple(shard[:train_examples]),
            tuple(shard[train_examples:train_examples + val_examples]),
            tuple(shard[train_examples + val_examples:]),
        ))
    return FederatedData(tuple(clients), tuple(global_test), unit, tuple(global_val))


def _draw_shard(pools: dict[str, list[Example]], units: list[str], weights: np.ndarray, size: int,
                rng: np.random.Generator) -> list[Example]:
    """``size`` examples drawn without replacement from the unit pools by ``weights`` (a unit that
    ran dry is skipped; if all of the client's did, any unit left), in a random order."""
    shard: list[Example] = []
    for _ in range(size):
        live = np.array([w if pools[u] else 0.0 for u, w in zip(units, weights)])
        if live.sum() == 0:  # the client's units ran dry: fall back to whatever is left
            live = np.array([float(len(pools[u]) > 0) for u in units])
        shard.append(pools[units[int(rng.choice(len(units), p=live / live.sum()))]].pop())
    order = rng.permutation(size)
    return [shard[i] for i in order]


def _round_robin(by_task: dict[str, list[Example]], tasks: list[str], size: int) -> list[Example]:
    """Pop ``size`` examples, one task at a time in turn (fewer if the pools run dry)."""
    out: list[Example] = []
    while len(out) < size and any(by_task.values()):
        for task in tasks:
            if by_task[task] and len(out) < size:
                out.append(by_task[task].pop())
    return out


def _mixture(scheme: str, n_units: int, concentration: float, k: int, sizes: np.ndarray,
             rng: np.random.Generator) -> np.ndarray:
    if scheme == "iid":
        return sizes / sizes.sum()
    if scheme == "dirichlet":
        return rng.dirichlet(np.full(n_units, concentration))
    if scheme == "k_tasks":
        chosen = rng.choice(n_units, size=min(k, n_units), replace=False)
        weights = np.zeros(n_units)
        weights[chosen] = 1.0 / len(chosen)
        return weights
    raise ValueError(f"unknown partition scheme {scheme!r}")


def histograms(data: FederatedData) -> list[Counter[str]]:
    """Each client's count of examples per unit, over all its splits."""
    return [Counter(unit_of(ex, data.unit) for ex in c.train + c.val + c.test) for c in data.clients]


def heterogeneity(data: FederatedData) -> float:
    """Mean total-variation distance between each client's unit mix and the pooled mix.

    0 means every client looks like the federation (IID); values near 1 mean clients hold
    units that barely overlap with the federation's overall mix.
    """
    hists = histograms(data)
    pooled: Counter[str] = sum(hists, Counter())
    units = sorted(pooled)
    total = sum(pooled.values())
    p = np.array([pooled[u] / total for u in units])
    dists = []
    for h in hists:
        n = sum(h.values())
        q = np.array([h[u] / n for u in units])
        dists.append(0.5 * np.abs(p - q).sum())
    return float(np.mean(dists))
