"""FedAvg: clients run local optimizer steps from the global prompt; the server averages.

McMahan et al. 2017, with the server optimizer of Reddi et al. 2021 (FedOpt): clients send
``global - local`` and the server steps on the example-weighted mean of those deltas.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rayfed.config import AlgorithmConfig
from rayfed.core.aggregation import aggregate_updates
from rayfed.data.formatting import TokenizedExample
from rayfed.local.training import step_job, steps_for, train_lockstep
from rayfed.model.prompt_model import PromptModel
from rayfed.settings import OptimizerSettings
from rayfed.types import ClientUpdate


@dataclass(frozen=True)
class FedAvg:
    optimizer: OptimizerSettings
    batch_size: int
    local_steps: int | None
    local_epochs: int | None
    proximal_mu: float = 0.0  # FedProx's pull toward the global prompt (rayfed.algorithms.fedprox); 0 here

    @classmethod
    def from_config(cls, cfg: AlgorithmConfig) -> FedAvg:
        return cls(OptimizerSettings.from_config(cfg.client_optimizer), cfg.batch_size, cfg.local_steps,
                   cfg.local_epochs)

    def client_updates(self, model: PromptModel, trains: Sequence[list[TokenizedExample]],
                       prompts: Sequence[torch.Tensor], seeds: Sequence[int], max_rows: int | None = None,
                       ) -> list[tuple[torch.Tensor, float]]:
        pull = self.proximal_mu > 0  # each client's local objective then adds mu / 2 * ||p - global||^2
        jobs = [step_job(train, prompt, steps_for(len(train), self.batch_size, self.local_steps, self.local_epochs),
                         self.batch_size, seed, l2_reference=prompt if pull else None)
                for train, prompt, seed in zip(trains, prompts, seeds)]
        results = train_lockstep(model, jobs, optimizer=self.optimizer, l2_strength=self.proximal_mu, max_rows=max_rows)
        return [(job.init_prompt - r.prompts[len(job.plan)], float(np.mean(r.losses))) for r, job in zip(results, jobs)]

    def aggregate(self, updates: Sequence[ClientUpdate]) -> torch.Tensor:
        return aggregate_updates(updates)
