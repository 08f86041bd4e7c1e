"""Small frozen settings, built once from the config at the edge and passed per call.

Nothing below the builders (workers, the driver, local training, the pure core) reads the
config: each gets only the settings it uses, as one of these records. Each ``from_config``
takes the config (or its section) it is built from; this module imports only ``rayfed.names``, so
any layer may use it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar

from rayfed.names import GLOBAL_SPLITS, LOCAL_SPLITS

if TYPE_CHECKING:
    from rayfed.config import AvailabilityConfig, EvalConfig, ExperimentConfig, ModelConfig, OptimizerConfig

S = TypeVar("S")


def _same_fields(cls: type[S], section: Any) -> S:
    """``cls`` from the config section's fields of the same names (the section may have more)."""
    return cls(**{f.name: getattr(section, f.name) for f in fields(cls)})  # type: ignore[arg-type]


@dataclass(frozen=True)
class OptimizerSettings:
    """A client, server or personalization optimizer: sgd | adam | adamw."""

    name: str
    lr: float
    momentum: float = 0.0  # sgd only
    weight_decay: float = 0.0

    @classmethod
    def from_config(cls, cfg: OptimizerConfig) -> OptimizerSettings:
        return _same_fields(cls, cfg)


@dataclass(frozen=True)
class ModelSettings:
    """The backbone and how the soft prompt starts (``model:``)."""

    name: str
    num_virtual_tokens: int
    prompt_init: str
    prompt_init_text: str
    trust_remote_code: bool = False
    dtype: str = "float32"  # the backbone's; the prompt trains in float32
    peft: str = "prompt_tuning"  # prompt_tuning | prefix_tuning | lora
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: list[str] | None = None  # None: PEFT's default for the architecture

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> ModelSettings:
        return _same_fields(cls, cfg)


@dataclass(frozen=True)
class AvailabilitySettings:
    """Simulated availability (``availability:``; rayfed.core.availability)."""

    dropout: float = 0.0
    speed_sigma: float = 0.0
    deadline: float | None = None
    min_clients: int = 1

    @classmethod
    def from_config(cls, cfg: AvailabilityConfig) -> AvailabilitySettings:
        return _same_fields(cls, cfg)


@dataclass(frozen=True)
class EvalSettings:
    """How a prompt is scored: batch size and the generation limit (``eval:``). Passed with every
    scoring call, so workers started for one run can score with other settings."""

    batch_size: int
    max_new_tokens: int

    @classmethod
    def from_config(cls, cfg: EvalConfig) -> EvalSettings:
        return _same_fields(cls, cfg)


@dataclass(frozen=True)
class WorkerSettings:
    """What a client worker needs besides its model, algorithm and data (how it scores comes with
    each call: :class:`EvalSettings`)."""

    seed: int
    max_source_tokens: int
    max_target_tokens: int
    batch_clients: bool = False  # lockstep training and pooled evaluation of the hosted clients
    max_batch_rows: int = 256
    use_gpu: bool = False  # a GPU share was requested: the worker trains on CUDA, and fails without it

    @classmethod
    def from_config(cls, cfg: ExperimentConfig) -> WorkerSettings:
        r = cfg.runtime
        return cls(cfg.seed, cfg.data.max_source_tokens, cfg.data.max_target_tokens, r.batch_clients,
                   r.max_batch_rows, r.num_gpus_per_worker > 0)


@dataclass(frozen=True)
class RoundSettings:
    """What the driver needs to run rounds and evaluations."""

    seed: int
    num_clients: int
    clients_per_round: int
    server_optimizer: OptimizerSettings
    availability: AvailabilitySettings
    local_splits: tuple[str, ...]  # the non-empty ones
    global_splits: tuple[str, ...]
    eval: EvalSettings  # how the rounds' evaluations score
    evaluate_clients: bool = True  # also score the global prompt on every client's own splits
    client_lr: float | None = None  # named in the error when training diverges
    compress: str = "none"  # how clients' updates travel (rayfed.core.compression)
    topk_fraction: float = 0.1
    ditto_global_examples: int | None = None  # Ditto's own prompts: each client's subsample of the global sets

    @classmethod
    def from_config(cls, cfg: ExperimentConfig) -> RoundSettings:
        p, a = cfg.partition, cfg.algorithm
        return cls(cfg.seed, p.num_clients, a.clients_per_round, OptimizerSettings.from_config(a.server_optimizer),
                   AvailabilitySettings.from_config(cfg.availability),
                   tuple(s for s in LOCAL_SPLITS if (p.val_examples if s == "local_val" else 1) > 0),
                   tuple(s for s in GLOBAL_SPLITS if (p.global_val_examples if s == "global_val" else 1) > 0),
                   EvalSettings.from_config(cfg.eval), cfg.eval.local, a.client_optimizer.lr,
                   cfg.communication.compress, cfg.communication.topk_fraction, cfg.eval.ditto_global_examples)
