"""FedSGD: each client computes one batch gradient at the global prompt; the server steps once.

With full-batch gradients and example weights this is exactly one centralized gradient step on
the union of the participating clients' data (the server optimizer's lr is the step size).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rayfed.config import AlgorithmConfig
from rayfed.core.aggregation import aggregate_updates
from rayfed.data.formatting import TokenizedExample
from rayfed.local import prompt_gradient
from rayfed.model import PromptModel
from rayfed.types import ClientUpdate


@dataclass(frozen=True)
class FedSGD:
    batch_size: int

    @classmethod
    def from_config(cls, cfg: AlgorithmConfig) -> FedSGD:
        return cls(cfg.batch_size)

    def client_update(self, model: PromptModel, train: list[TokenizedExample],
                      global_prompt: torch.Tensor, seed: int) -> tuple[torch.Tensor, float]:
        return prompt_gradient(model, train, global_prompt, batch_size=self.batch_size, seed=seed)

    def aggregate(self, updates: Sequence[ClientUpdate]) -> torch.Tensor:
        return aggregate_updates(updates)
