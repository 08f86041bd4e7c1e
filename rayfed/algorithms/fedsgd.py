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
from rayfed.local.training import gradient_batch, gradients_lockstep
from rayfed.model.prompt_model import PromptModel
from rayfed.types import ClientUpdate


@dataclass(frozen=True)
class FedSGD:
    batch_size: int

    @classmethod
    def from_config(cls, cfg: AlgorithmConfig) -> FedSGD:
        return cls(cfg.batch_size)

    def client_updates(self, model: PromptModel, trains: Sequence[list[TokenizedExample]],
                       prompts: Sequence[torch.Tensor], seeds: Sequence[int], max_rows: int | None = None,
                       ) -> list[tuple[torch.Tensor, float]]:
        batches = [gradient_batch(train, self.batch_size, seed) for train, seed in zip(trains, seeds)]
        return gradients_lockstep(model, batches, prompts, max_rows)

    def aggregate(self, updates: Sequence[ClientUpdate]) -> torch.Tensor:
        return aggregate_updates(updates)
