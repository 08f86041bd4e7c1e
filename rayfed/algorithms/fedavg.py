"""FedAvg: clients run local optimizer steps from the global prompt; the server averages.

McMahan et al. 2017, with the server optimizer of Reddi et al. 2021 (FedOpt): clients send
``global - local`` and the server steps on the example-weighted mean of those deltas.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rayfed.config import AlgorithmConfig, OptimizerConfig
from rayfed.core.aggregation import aggregate_updates
from rayfed.data.formatting import TokenizedExample
from rayfed.local import steps_for, train_prompt
from rayfed.model import PromptModel
from rayfed.types import ClientUpdate


@dataclass(frozen=True)
class FedAvg:
    optimizer: OptimizerConfig
    batch_size: int
    local_steps: int | None
    local_epochs: int | None

    @classmethod
    def from_config(cls, cfg: AlgorithmConfig) -> FedAvg:
        return cls(cfg.client_optimizer, cfg.batch_size, cfg.local_steps, cfg.local_epochs)

    def client_update(self, model: PromptModel, train: list[TokenizedExample],
                      global_prompt: torch.Tensor, seed: int) -> tuple[torch.Tensor, float]:
        steps = steps_for(len(train), self.batch_size, self.local_steps, self.local_epochs)
        local, loss = train_prompt(model, train, global_prompt, optimizer=self.optimizer,
                                   num_steps=steps, batch_size=self.batch_size, seed=seed)
        return global_prompt - local, loss

    def aggregate(self, updates: Sequence[ClientUpdate]) -> torch.Tensor:
        return aggregate_updates(updates)
