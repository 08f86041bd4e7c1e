"""Which worker hosts which client: the one rule every executor and resource check follows.

Client ``i`` lives on worker ``i % W``, where ``W`` is ``runtime.num_workers`` (one worker per
client when unset). Round-robin keeps the workers' loads within one client of each other for
any number of clients, and every client's numbers are the same whatever ``W`` is: a worker
resets the prompt and optimizer for each client it trains.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from rayfed.config import ExperimentConfig

T = TypeVar("T")


def num_workers(cfg: ExperimentConfig) -> int:
    """``runtime.num_workers``, or one worker per client when it is unset."""
    return cfg.runtime.num_workers or cfg.partition.num_clients


def worker_of(client_id: int, workers: int) -> int:
    return client_id % workers


def by_worker(items: Iterable[tuple[int, T]], workers: int) -> list[dict[int, T]]:
    """Group ``(client_id, item)`` pairs by the worker hosting each client, ids ascending."""
    groups: list[dict[int, T]] = [{} for _ in range(workers)]
    for cid, item in sorted(items, key=lambda pair: pair[0]):
        groups[worker_of(cid, workers)][cid] = item
    return groups
