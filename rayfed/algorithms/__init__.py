"""Algorithm registry: one line per algorithm; each lives in its own small file."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rayfed.algorithms.base import Algorithm
    from rayfed.config import AlgorithmConfig

# name -> "module:Class"; resolved lazily so importing the config schema stays light.
ALGORITHMS = {
    "fedavg": "rayfed.algorithms.fedavg:FedAvg",
    "fedprox": "rayfed.algorithms.fedprox:FedProx",
    "fedsgd": "rayfed.algorithms.fedsgd:FedSGD",
    "ditto": "rayfed.algorithms.ditto:Ditto",
}


def build_algorithm(cfg: AlgorithmConfig) -> Algorithm:
    """Instantiate the configured algorithm from its frozen parameters."""
    import importlib

    module, cls = ALGORITHMS[cfg.name].split(":")
    return getattr(importlib.import_module(module), cls).from_config(cfg)
