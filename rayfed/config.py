"""Typed experiment configuration: OmegaConf structured configs, YAML files, ``key=value`` overrides.

Every knob lives in one dataclass below, with its default and a one-line meaning. ``load_config``
merges the schema, a YAML file and command-line overrides; unknown keys, wrong types and
inconsistent values raise :class:`ConfigError` with a message naming the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

OPTIMIZERS = ("sgd", "adam", "adamw")
SERVER_OPTIMIZERS = ("sgd", "adam")
DATA_SOURCES = ("synthetic", "bigbench", "sni")
PARTITION_SCHEMES = ("dirichlet", "k_tasks", "iid")
PARTITION_UNITS = ("category", "task")
PROMPT_INITS = ("text", "random")
EXECUTORS = ("ray", "local")


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key."""


@dataclass
class ModelConfig:
    name: str = "smollm2-135m"  # built-in name (smollm2-135m, tiny-llama), hub id or local path
    num_virtual_tokens: int = 20  # length of the soft prompt
    prompt_init: str = "text"  # text: embeddings of prompt_init_text; random: N(0, embedding std)
    prompt_init_text: str = "Read the instruction and the input, then write the correct output."


@dataclass
class DataConfig:
    source: str = "bigbench"  # synthetic | bigbench | sni
    path: str | None = None  # sni: a directory of SNI task files or a JSONL file
    tasks: list[str] | None = None  # restrict to these task names (None: all)
    max_examples_per_task: int = 400  # cap per task before partitioning
    max_source_tokens: int = 128  # instruction + input, truncated from the left
    max_target_tokens: int = 32  # target (+ EOS), truncated from the right


@dataclass
class PartitionConfig:
    num_clients: int = 8
    scheme: str = "dirichlet"  # dirichlet | k_tasks | iid
    unit: str = "category"  # what clients differ in: task category or individual task
    alpha: float = 0.5  # dirichlet concentration: small = one unit per client, large = IID
    units_per_client: int = 2  # k_tasks: units per client
    train_examples: int = 64  # per client
    val_examples: int = 8  # per client
    test_examples: int = 16  # per client
    global_test_examples: int = 64  # held out first, spread evenly over tasks


@dataclass
class OptimizerConfig:
    name: str = "sgd"  # client: sgd | adam | adamw; server: sgd | adam
    lr: float = 0.1
    momentum: float = 0.0  # sgd only
    weight_decay: float = 0.0


@dataclass
class AlgorithmConfig:
    name: str = "fedavg"  # fedavg | fedsgd
    rounds: int = 5
    clients_per_round: int = 4
    local_steps: int | None = 4  # fedavg: optimizer steps per round (or set local_epochs)
    local_epochs: int | None = None  # fedavg: passes over the client's train split per round
    batch_size: int = 8  # fedavg: local batch; fedsgd: gradient batch (>= train size: full batch)
    client_optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig("sgd", 0.1))
    # FedAvg's plain average is sgd with lr 1.0; FedSGD needs the server lr to be the step size.
    server_optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig("sgd", 1.0))


@dataclass
class EvalConfig:
    eval_every: int = 1  # rounds between evaluations; round 0 and the last round always
    batch_size: int = 16
    max_new_tokens: int = 32  # upper bound; each batch stops at its longest target
    local: bool = True  # also evaluate the global prompt on each client's own test split


@dataclass
class PersonalizeConfig:
    """After federated training, each client fine-tunes the global prompt on its own train split
    and is evaluated on its own test split (personalization) and the global test set (robustness)."""

    enabled: bool = False
    local_epochs: int = 1  # passes over the client's train split
    batch_size: int = 8
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig("sgd", 0.316))  # 10^-0.5
    l2_strength: float = 0.0  # lambda: adds lambda/2 * ||p - global_prompt||^2 to the local objective
    # Interpolation ratios evaluated: p = (1 - alpha) * global + alpha * local. alpha 0 (the global
    # prompt) is already measured by the final evaluation, so it is left out by default.
    alphas: list[float] = field(default_factory=lambda: [0.5, 1.0])


@dataclass
class RuntimeConfig:
    executor: str = "ray"  # ray: one actor per client; local: in-process, for debugging
    num_cpus_per_client: float = 0.25  # always explicit: an actor without it can hang Ray
    num_gpus_per_client: float = 0.0  # fractional GPU per client actor
    num_cpus_driver: float = 0.1
    torch_threads: int = 1  # torch threads in each client actor (local executor: all cores)


@dataclass
class RayConfig:
    address: str | None = None  # None: $RAY_ADDRESS if set (ray job submit), else a local cluster
    num_cpus: int | None = None  # local cluster only
    num_gpus: float | None = None  # local cluster only (can be faked on a CPU machine)
    include_dashboard: bool = False


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    seed: int = 0
    output_dir: str = "outputs/${name}"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    personalize: PersonalizeConfig = field(default_factory=PersonalizeConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    ray: RayConfig = field(default_factory=RayConfig)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Build a validated config from the schema defaults, a YAML file and ``key=value`` overrides.

    Args:
        path: YAML file (None: schema defaults only).
        overrides: Dotted ``key=value`` strings, e.g. ``["algorithm.rounds=3"]``.

    Raises:
        ConfigError: naming the key for unknown keys, wrong types and inconsistent values.
    """
    merged: DictConfig = OmegaConf.structured(ExperimentConfig)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        merged = _merge(merged, OmegaConf.load(path), str(path))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        merged = _merge(merged, OmegaConf.from_dotlist([item]), f"override {item!r}")
    try:
        cfg: ExperimentConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        raise ConfigError(_describe(err, "config")) from None
    validate(cfg)
    return cfg


def to_yaml(cfg: ExperimentConfig) -> str:
    """The fully resolved config as YAML (written to ``output_dir/config.yaml``)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def _merge(base: DictConfig, extra: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, extra)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise ConfigError(_describe(err, source)) from None


def _describe(err: OmegaConfBaseException, source: str) -> str:
    key = getattr(err, "full_key", None)
    first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
    return f"{source}: key '{key}': {first_line}" if key else f"{source}: {first_line}"


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"key '{key}': {message}")


def _choice(key: str, value: str, options: tuple[str, ...]) -> None:
    _check(value in options, key, f"{value!r} is not one of {', '.join(options)}")


def validate(cfg: ExperimentConfig) -> None:
    """Cross-field and range checks that types alone cannot express."""
    from rayfed.algorithms import ALGORITHMS  # late import: algorithms import this module's types

    m, d, p, a, e, r = cfg.model, cfg.data, cfg.partition, cfg.algorithm, cfg.eval, cfg.runtime
    _check(m.num_virtual_tokens >= 1, "model.num_virtual_tokens", "must be >= 1")
    _choice("model.prompt_init", m.prompt_init, PROMPT_INITS)
    _choice("data.source", d.source, DATA_SOURCES)
    _check(d.source != "sni" or bool(d.path), "data.path", "is required when data.source is sni")
    _check(d.max_examples_per_task >= 1, "data.max_examples_per_task", "must be >= 1")
    _check(d.max_source_tokens >= 1, "data.max_source_tokens", "must be >= 1")
    _check(d.max_target_tokens >= 2, "data.max_target_tokens", "must be >= 2 (target + EOS)")

    _check(p.num_clients >= 1, "partition.num_clients", "must be >= 1")
    _choice("partition.scheme", p.scheme, PARTITION_SCHEMES)
    _choice("partition.unit", p.unit, PARTITION_UNITS)
    _check(p.alpha > 0 and math.isfinite(p.alpha), "partition.alpha", "must be a positive number")
    _check(p.units_per_client >= 1, "partition.units_per_client", "must be >= 1")
    _check(p.train_examples >= 1, "partition.train_examples", "must be >= 1")
    _check(p.val_examples >= 0, "partition.val_examples", "must be >= 0")
    _check(p.test_examples >= 1, "partition.test_examples", "must be >= 1")
    _check(p.global_test_examples >= 1, "partition.global_test_examples", "must be >= 1")

    _choice("algorithm.name", a.name, tuple(ALGORITHMS))
    _check(a.rounds >= 1, "algorithm.rounds", "must be >= 1")
    _check(1 <= a.clients_per_round <= p.num_clients, "algorithm.clients_per_round",
           f"must be between 1 and partition.num_clients ({p.num_clients}), got {a.clients_per_round}")
    _check((a.local_steps is None) != (a.local_epochs is None), "algorithm.local_steps",
           "set exactly one of algorithm.local_steps and algorithm.local_epochs (the other to null)")
    _check(a.local_steps is None or a.local_steps >= 1, "algorithm.local_steps", "must be >= 1")
    _check(a.local_epochs is None or a.local_epochs >= 1, "algorithm.local_epochs", "must be >= 1")
    _check(a.batch_size >= 1, "algorithm.batch_size", "must be >= 1")
    for key, opt, options in (("algorithm.client_optimizer", a.client_optimizer, OPTIMIZERS),
                              ("algorithm.server_optimizer", a.server_optimizer, SERVER_OPTIMIZERS)):
        _choice(f"{key}.name", opt.name, options)
        _check(opt.lr > 0 and math.isfinite(opt.lr), f"{key}.lr", f"must be a positive number, got {opt.lr}")
        _check(0 <= opt.momentum < 1, f"{key}.momentum", "must be in [0, 1)")
        _check(opt.weight_decay >= 0, f"{key}.weight_decay", "must be >= 0")

    _check(e.eval_every >= 1, "eval.eval_every", "must be >= 1")
    _check(e.batch_size >= 1, "eval.batch_size", "must be >= 1")
    _check(e.max_new_tokens >= 1, "eval.max_new_tokens", "must be >= 1")

    z = cfg.personalize
    _check(z.local_epochs >= 1, "personalize.local_epochs", "must be >= 1")
    _check(z.batch_size >= 1, "personalize.batch_size", "must be >= 1")
    _choice("personalize.optimizer.name", z.optimizer.name, OPTIMIZERS)
    _check(z.optimizer.lr > 0 and math.isfinite(z.optimizer.lr), "personalize.optimizer.lr",
           f"must be a positive number, got {z.optimizer.lr}")
    _check(z.l2_strength >= 0, "personalize.l2_strength", "must be >= 0")
    _check(len(z.alphas) >= 1, "personalize.alphas", "needs at least one interpolation ratio")
    for alpha in z.alphas:
        _check(0.0 <= alpha <= 1.0, "personalize.alphas", f"every alpha must be in [0, 1], got {alpha}")

    _choice("runtime.executor", r.executor, EXECUTORS)
    _check(r.num_cpus_per_client > 0, "runtime.num_cpus_per_client",
           "must be > 0 (Ray actors need an explicit CPU share)")
    _check(r.num_gpus_per_client >= 0, "runtime.num_gpus_per_client", "must be >= 0")
    _check(r.num_cpus_driver > 0, "runtime.num_cpus_driver", "must be > 0")
    _check(r.torch_threads >= 1, "runtime.torch_threads", "must be >= 1")
