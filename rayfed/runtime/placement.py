"""Which worker hosts which client: the one rule every executor and resource check follows;
and which nodes a run may use (``runtime.label_selector``).

Client ``i`` lives on worker ``i % W``, where ``W`` is ``runtime.num_workers`` (one worker per
client when unset). Round-robin keeps the workers' loads within one client of each other for
any number of clients, and every client's numbers are the same whatever ``W`` is: a worker
resets the prompt and optimizer for each client it trains.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from rayfed.config import ConfigError, ExperimentConfig

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


def run_bundles(cfg: ExperimentConfig, process_cpus: float) -> list[dict[str, float]]:
    """Placement-group bundles that hold one whole run: its own process (``process_cpus``), then,
    with ``runtime.executor=ray``, the driver actor and one bundle per worker actor. A Tune trial
    and each of a study's parallel runs reserve these, so concurrent runs never wait on each
    other's actors."""
    r = cfg.runtime
    bundles = [{"CPU": process_cpus}]
    if r.executor == "ray":
        worker = {"CPU": r.num_cpus_per_worker, **({"GPU": r.num_gpus_per_worker} if r.num_gpus_per_worker else {})}
        bundles += [{"CPU": r.num_cpus_driver}] + [dict(worker) for _ in range(num_workers(cfg))]
    return bundles


def bundle_selectors(cfg: ExperimentConfig, bundles: list[dict[str, float]]) -> dict[str, Any]:
    """``placement_group()`` keywords that put every bundle of a run on the nodes
    ``runtime.label_selector`` admits (none when it is empty)."""
    selector = dict(cfg.runtime.label_selector)
    return {"bundle_label_selector": [dict(selector) for _ in bundles]} if selector else {}


def label_matches(labels: dict[str, str], selector: dict[str, str]) -> bool:
    """Whether a node with ``labels`` satisfies a Ray ``label_selector`` (``value``, ``!value``,
    ``in(a,b)``, ``!in(a,b)``; a node without the label is "not" any value)."""
    for key, want in selector.items():
        negate = want.startswith("!")
        want = want.removeprefix("!")
        values = {v.strip() for v in want[3:-1].split(",")} if want.startswith("in(") and want.endswith(")") else {want}
        if (labels.get(key) in values) == negate:
            return False
    return True


def check_bundles_fit(cfg: ExperimentConfig, bundles: list[dict[str, float]], cluster: dict[str, float],
                      what: str, process_key: str) -> None:
    """Fail now, naming the keys, when ``what`` (one trial, one study run) cannot fit the cluster."""
    for resource in ("CPU", "GPU"):
        need = sum(b.get(resource, 0.0) for b in bundles)
        if need > cluster.get(resource, 0.0) + 1e-9:
            where = " on the nodes runtime.label_selector admits" if cfg.runtime.label_selector else ""
            raise ConfigError(
                f"{what} needs {need:g} {resource}s ({process_key} + runtime.num_cpus_driver + "
                f"runtime.num_workers x runtime.num_{resource.lower()}s_per_worker with runtime.executor="
                f"{cfg.runtime.executor}), but the Ray cluster has {cluster.get(resource, 0.0):g}{where}; lower them "
                f"or use runtime.executor=local")
