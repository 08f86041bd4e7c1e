"""What one personalization does: a frozen record passed into every call below the phase (a Tune
trial or a study job brings its own)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from rayfed.config import PersonalizeConfig
from rayfed.settings import OptimizerSettings


@dataclass(frozen=True)
class PersonalizeSettings:
    """What one personalization run does; passed into every call (a Tune trial brings its own)."""

    epochs: int
    eval_every_epochs: int
    batch_size: int
    optimizer: OptimizerSettings
    l2_strength: float
    interp_ratios: tuple[float, ...]
    global_eval_examples: int | None
    global_tolerance: float
    validation: bool = True
    metric: str = "rouge_l"  # what the selection rules read (rayfed.core.selection)

    @classmethod
    def from_config(cls, cfg: PersonalizeConfig) -> PersonalizeSettings:
        return cls(cfg.local_epochs, cfg.eval_every_epochs, cfg.batch_size,
                   OptimizerSettings.from_config(cfg.optimizer), cfg.l2_strength, tuple(cfg.interp_ratios),
                   cfg.global_eval_examples, cfg.global_tolerance, cfg.validation, cfg.metric)

    @classmethod
    def from_summary(cls, settings: dict[str, Any]) -> PersonalizeSettings:
        """The settings a personalization's ``summary.json`` records (``asdict`` of these)."""
        return cls(**{**settings, "optimizer": OptimizerSettings(**settings["optimizer"]),
                      "interp_ratios": tuple(settings["interp_ratios"])})

    def eval_epochs(self) -> list[int]:
        """0, every ``eval_every_epochs``-th epoch, and the last one."""
        return sorted(set(range(0, self.epochs + 1, self.eval_every_epochs)) | {self.epochs})

    def training_key(self, seed: int) -> str:
        """Identifies the local prompts: settings that differ only in how they are scored
        (ratios, subsample, tolerance, metric) share them."""
        train = {k: v for k, v in asdict(self).items()
                 if k not in ("interp_ratios", "global_eval_examples", "global_tolerance", "validation", "metric")}
        return hashlib.sha256(json.dumps([seed, train], sort_keys=True).encode()).hexdigest()[:16]
