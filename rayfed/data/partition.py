"""Split a pool of examples into a global test set and per-client train/val/test shards.

Heterogeneity is controlled over *units* (task categories or tasks): each client draws a mixture
over units (Dirichlet with ``concentration``, ``k`` units uniformly, or the pool's own mix
for IID) and fills its shard example by example from the units' pools without replacement, so a
partition never uses an example twice. With one's own data (``scheme="site"``) the clients are
the sites the records name, not a draw.
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
    sites: tuple[str, ...] = ()  # partition.scheme site: client i is the site sites[i]


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
    if scheme == "site":
        return _by_site(examples, num_clients=num_clients, unit=unit, train_examples=train_examples,
                        val_examples=val_examples, test_examples=test_examples,
                        global_test_examples=global_test_examples, global_val_examples=global_val_examples, rng=rng)
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


def _by_site(examples: list[Example], *, num_clients: int, unit: str, train_examples: int, val_examples: int,
             test_examples: int, global_test_examples: int, global_val_examples: int,
             rng: np.random.Generator) -> FederatedData:
    """One client per site, in site order: the global test and validation sets are drawn round-robin
    over the sites first; then each site keeps ``val_examples`` and ``test_examples`` of the rest and
    up to ``train_examples`` for training (sites differ in size, and so do their train splits)."""
    by_site: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        by_site[ex.site].append(ex)
    sites = sorted(by_site, key=lambda s: (0, int(s), s) if s.isdigit() else (1, 0, s))
    if num_clients != len(sites):
        shown = ", ".join(sites[:8]) + (", ..." if len(sites) > 8 else "")
        raise UserError(f"key 'partition.num_clients': is {num_clients}, but the data has {len(sites)} site(s) "
                        f"({shown}); with partition.scheme site every site is one client: set "
                        f"partition.num_clients={len(sites)}")
    for site in sites:
        order = rng.permutation(len(by_site[site]))
        by_site[site] = [by_site[site][i] for i in order]
    global_test = _round_robin(by_site, sites, global_test_examples)
    global_val = _round_robin(by_site, sites, global_val_examples)
    need = val_examples + test_examples + 1
    small = [f"{site} ({len(by_site[site])})" for site in sites if len(by_site[site]) < need]
    if small:
        raise UserError(
            f"key 'partition.val_examples': site(s) {', '.join(small[:8])} keep too few records after the global test "
            f"and validation sets; each site needs partition.val_examples + partition.test_examples + 1 = {need} "
            f"(lower those, or partition.global_test_examples / global_val_examples, or give those sites more data)")
    clients = []
    for client_id, site in enumerate(sites):
        pool = by_site[site]
        val, test = pool[:val_examples], pool[val_examples:val_examples + test_examples]
        train = pool[val_examples + test_examples:][:train_examples]
        clients.append(ClientData(client_id, tuple(train), tuple(val), tuple(test)))
    return FederatedData(tuple(clients), tuple(global_test), unit, tuple(global_val), tuple(sites))


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


def _round_robin(pools: dict[str, list[Example]], keys: list[str], size: int) -> list[Example]:
    """Pop ``size`` examples, one pool (task or site) at a time in turn (fewer if the pools run dry)."""
    out: list[Example] = []
    while len(out) < size and any(pools.values()):
        for key in keys:
            if pools[key] and len(out) < size:
                out.append(pools[key].pop())
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
