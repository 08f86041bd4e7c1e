"""Ditto: FedAvg for the global prompt, and beside it each client's own prompt, kept across rounds.

Li et al. 2021 ("Ditto: fair and robust federated learning through personalization"): a client
picked in a round trains the global prompt as FedAvg does (what the server averages), then
trains its own prompt ``v`` for as many steps on its data with the pull
``lambda / 2 * ||v - global||^2`` toward the global prompt it received (``algorithm.ditto_lambda``).
``v`` starts as the global prompt the first time the client is picked. The personal prompts are
plain per-client records the driver holds and saves in the checkpoint (``personal/<id>``), so a
resumed run continues them bit for bit; they never reach the server's average.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rayfed.algorithms.fedavg import FedAvg
from rayfed.config import AlgorithmConfig
from rayfed.data.formatting import TokenizedExample
from rayfed.local.training import step_job, steps_for, train_lockstep
from rayfed.model.prompt_model import PromptModel
from rayfed.settings import OptimizerSettings


@dataclass(frozen=True)
class Ditto(FedAvg):
    ditto_lambda: float = 0.1
    personal = True  # the driver keeps a prompt per client and asks for personal_updates

    @classmethod
    def from_config(cls, cfg: AlgorithmConfig) -> Ditto:
        return cls(OptimizerSettings.from_config(cfg.client_optimizer), cfg.batch_size, cfg.local_steps,
                   cfg.local_epochs, ditto_lambda=cfg.ditto_lambda)

    def personal_updates(self, model: PromptModel, trains: Sequence[list[TokenizedExample]],
                         personal: Sequence[torch.Tensor], global_prompts: Sequence[torch.Tensor],
                         seeds: Sequence[int], max_rows: int | None = None) -> list[tuple[torch.Tensor, float]]:
        """``(new personal prompt, mean train loss)`` of each client: its own prompt trained for the
        round's local steps with the pull toward the global prompt of the round."""
        jobs = [step_job(train, own, steps_for(len(train), self.batch_size, self.local_steps, self.local_epochs),
                         self.batch_size, seed, l2_reference=glob)
                for train, own, glob, seed in zip(trains, personal, global_prompts, seeds)]
        results = train_lockstep(model, jobs, optimizer=self.optimizer, l2_strength=self.ditto_lambda,
                                 max_rows=max_rows)
        return [(r.prompts[len(job.plan)], float(np.mean(r.losses))) for r, job in zip(results, jobs)]
