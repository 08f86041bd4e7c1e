"""One entry point from ``data:`` config to a list of examples, whatever the source."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from rayfed.config import DataConfig, ExperimentConfig
from rayfed.data.partition import FederatedData, partition
from rayfed.errors import UserError
from rayfed.types import Example


def load_examples(cfg: DataConfig, seed: int) -> list[Example]:
    """Load the configured source, restricted to ``cfg.tasks`` and capped per task.

    Raises:
        FileNotFoundError: when a prepared cache or a user path is missing; the message says
            how to get it.
    """
    if cfg.source == "synthetic":
        from rayfed.data.synthetic import TASKS, generate_synthetic

        unknown = sorted(set(cfg.tasks or []) - set(TASKS))
        if unknown:
            raise UserError(f"key 'data.tasks': no synthetic task {', '.join(unknown)} (known: {', '.join(TASKS)})")
        return generate_synthetic(cfg.max_examples_per_task, seed, cfg.tasks)
    if cfg.source == "evals":
        from rayfed.data.evals import load_evals, prepare_evals

        prepare_evals()  # first use downloads and extracts (a few seconds); afterwards a no-op
        examples = load_evals(tasks=cfg.tasks)
    elif cfg.source == "bigbench":
        from rayfed.data.bigbench import load_bigbench, prepare_bigbench

        prepare_bigbench()  # first use downloads and extracts where the index serves it; afterwards a no-op
        examples = load_bigbench(tasks=cfg.tasks)
    elif cfg.source in ("sites", "sni"):  # files of the user's: restricted to data.tasks here
        from rayfed.data.sites import load_sites
        from rayfed.data.sni import load_sni

        examples = (load_sites if cfg.source == "sites" else load_sni)(Path(str(cfg.path)))
        if cfg.tasks is not None:
            wanted = set(cfg.tasks)
            examples = [ex for ex in examples if ex.task in wanted]
    else:
        raise ValueError(f"unknown data source {cfg.source!r}")
    if cfg.tasks is not None and not examples:
        raise UserError(f"key 'data.tasks': none of {', '.join(cfg.tasks)} is in the {cfg.source} data")
    return cap_per_task(examples, cfg.max_examples_per_task)


def cap_per_task(examples: list[Example], limit: int) -> list[Example]:
    """Keep the first ``limit`` examples of each task (of each site's tasks, for one's own data), in
    their original order."""
    seen: dict[tuple[str, str], int] = defaultdict(int)
    kept = []
    for ex in examples:
        if seen[ex.site, ex.task] < limit:
            seen[ex.site, ex.task] += 1
            kept.append(ex)
    return kept


def federated_data(cfg: ExperimentConfig) -> FederatedData:
    """Load the configured examples and partition them across clients."""
    p = cfg.partition
    return partition(
        load_examples(cfg.data, cfg.seed), num_clients=p.num_clients, scheme=p.scheme, unit=p.unit,
        concentration=p.concentration, units_per_client=p.units_per_client, train_examples=p.train_examples,
        val_examples=p.val_examples, test_examples=p.test_examples,
        global_test_examples=p.global_test_examples, global_val_examples=p.global_val_examples,
        seed=cfg.seed)
