"""FedProx: FedAvg whose clients add a proximal term toward the global prompt they start from.

Li et al. 2020: each client minimizes its loss plus ``mu / 2 * ||p - p_global||^2``
(``algorithm.proximal_mu``), which keeps local prompts near the global one when clients' data
differ; the server averages as FedAvg does. ``mu = 0`` is FedAvg exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from rayfed.algorithms.fedavg import FedAvg
from rayfed.config import AlgorithmConfig
from rayfed.settings import OptimizerSettings


@dataclass(frozen=True)
class FedProx(FedAvg):
    @classmethod
    def from_config(cls, cfg: AlgorithmConfig) -> FedProx:
        return cls(OptimizerSettings.from_config(cfg.client_optimizer), cfg.batch_size, cfg.local_steps,
                   cfg.local_epochs, cfg.proximal_mu)
