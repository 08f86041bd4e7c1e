"""What a run's workers and driver are built from, made from the config once, at the edge."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rayfed.algorithms import build_algorithm
from rayfed.algorithms.base import Algorithm
from rayfed.settings import ModelSettings, RoundSettings, WorkerSettings

if TYPE_CHECKING:
    from rayfed.config import ExperimentConfig


@dataclass(frozen=True)
class RunParts:
    """The constructor arguments of every ``ClientWorker`` (model, worker settings, algorithm) and
    of the ``Driver`` (round settings, algorithm); nothing below them reads the config."""

    model: ModelSettings
    worker: WorkerSettings
    rounds: RoundSettings
    algorithm: Algorithm

    @classmethod
    def from_config(cls, cfg: ExperimentConfig) -> RunParts:
        return cls(ModelSettings.from_config(cfg.model), WorkerSettings.from_config(cfg),
                   RoundSettings.from_config(cfg), build_algorithm(cfg.algorithm))
