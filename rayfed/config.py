"""Typed experiment configuration: OmegaConf structured configs, YAML files, ``key=value`` overrides.

Every knob lives in one dataclass below, with its default and a one-line meaning. ``load_config``
merges the schema, a YAML file and command-line overrides; unknown keys, wrong types and
inconsistent values raise :class:`ConfigError` with a message naming the key.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rayfed.core.selection import SELECTION_METRICS
from rayfed.errors import UserError

# The algorithm registry (rayfed.algorithms.ALGORITHMS) holds one entry per name; a test keeps them equal.
ALGORITHM_NAMES = ("fedavg", "fedprox", "fedsgd", "ditto")
OPTIMIZERS = ("sgd", "adam", "adamw")
SERVER_OPTIMIZERS = ("sgd", "adam")
DATA_SOURCES = ("synthetic", "evals", "bigbench", "sni", "sites")
PARTITION_SCHEMES = ("dirichlet", "k_tasks", "iid", "site")
PARTITION_UNITS = ("category", "task")
DTYPES = ("float32", "bfloat16", "float16")
PEFT_METHODS = ("prompt_tuning", "prefix_tuning", "lora")
COMPRESSIONS = ("none", "fp16", "int8", "topk")  # rayfed.core.compression.METHODS
PROMPT_INITS = ("text", "random")
FAILURE_POLICIES = ("retry", "drop", "fail")
EXECUTORS = ("ray", "local")
WANDB_MODES = ("online", "offline", "disabled")
TUNE_KINDS = ("personalize", "federation")
SEARCHERS = ("grid", "random", "optuna", "optuna_multi")
SCHEDULERS = ("none", "asha")
SPACE_TYPES = ("grid", "choice", "uniform", "loguniform")


class ConfigError(UserError):
    """A configuration problem; the message names the offending key."""


@dataclass
class ModelConfig:
    name: str = "smollm2-135m"  # built-in name (smollm2-135m, tiny-llama), hub id or local path
    # What trains on the frozen backbone: prompt_tuning (a soft prompt in front of the input),
    # prefix_tuning (keys and values of virtual tokens in every layer, PEFT's PREFIX_TUNING) or
    # lora (low-rank updates of the lora_targets layers, PEFT's LORA).
    peft: str = "prompt_tuning"
    num_virtual_tokens: int = 20  # length of the soft prompt or prefix
    lora_rank: int = 8  # LoRA's r
    lora_alpha: float = 16.0  # LoRA's alpha: the update is scaled by alpha / r
    # Module names (or name suffixes) LoRA adapts, as PEFT's target_modules; null: PEFT's default
    # for the architecture (q_proj, v_proj on Llama, Qwen2, Gemma 3; c_attn on GPT-2).
    lora_targets: list[str] | None = None
    # text: embeddings of prompt_init_text; random: N(0, embedding std). A prefix starts as the
    # keys and values the backbone computes for that prompt, so both methods start from one model.
    prompt_init: str = "text"
    prompt_init_text: str = "Read the instruction and the input, then write the correct output."
    # Run Python code shipped with a hub model or local directory (its own modeling files). Off:
    # only architectures transformers itself implements load.
    trust_remote_code: bool = False
    # The frozen backbone's weights and activations: float32 | bfloat16 | float16. The prompt (or
    # any trainable adapter) stays float32, as do its optimizer state, the loss and aggregation.
    dtype: str = "float32"


@dataclass
class DataConfig:
    # evals | bigbench (with its archive) | synthetic | sni | sites (your own records, docs/own-data.md)
    source: str = "evals"
    path: str | None = None  # sni: a directory of SNI task files or a JSONL file; sites: a JSONL file
    tasks: list[str] | None = None  # restrict to these task names (None: all)
    max_examples_per_task: int = 400  # cap per task (sites: per site and task) before partitioning
    max_source_tokens: int = 128  # instruction + input, truncated from the left
    max_target_tokens: int = 32  # target (+ EOS), truncated from the right


@dataclass
class PartitionConfig:
    num_clients: int = 8
    scheme: str = "dirichlet"  # dirichlet | k_tasks | iid | site (one client per site of data.source sites)
    unit: str = "category"  # what clients differ in: task category or individual task
    concentration: float = 0.5  # dirichlet: small = one unit per client, large = IID
    units_per_client: int = 2  # k_tasks: units per client
    train_examples: int = 64  # per client (site: at most; a smaller site trains on what it has)
    val_examples: int = 8  # per client
    test_examples: int = 16  # per client
    global_test_examples: int = 64  # held out first, spread evenly over tasks (site: over sites)
    global_val_examples: int = 64  # held out next, the same way: model selection reads it, never test


@dataclass
class OptimizerConfig:
    name: str = "sgd"  # client: sgd | adam | adamw; server: sgd | adam
    lr: float = 0.1
    momentum: float = 0.0  # sgd only
    weight_decay: float = 0.0


@dataclass
class AlgorithmConfig:
    name: str = "fedavg"  # fedavg | fedprox | fedsgd | ditto
    rounds: int = 5
    clients_per_round: int = 4
    local_steps: int | None = 4  # fedavg: optimizer steps per round (or set local_epochs)
    local_epochs: int | None = None  # fedavg: passes over the client's train split per round
    batch_size: int = 8  # fedavg: local batch; fedsgd: gradient batch (>= train size: full batch)
    client_optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig("sgd", 0.1))
    # FedAvg's plain average is sgd with lr 1.0; FedSGD needs the server lr to be the step size.
    server_optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig("sgd", 1.0))
    # fedprox: mu of the proximal term mu / 2 * ||p - global||^2 in each client's local objective
    # (Li et al. 2020); 0 is plain FedAvg.
    proximal_mu: float = 0.0
    # ditto: lambda of the pull lambda / 2 * ||v - global||^2 on each client's own prompt v, trained
    # beside the global one (Li et al. 2021); 0: v trains on the client's data alone.
    ditto_lambda: float = 0.1


@dataclass
class CommunicationConfig:
    """What a client's update costs on the way to the server (rayfed.core.compression)."""

    compress: str = "none"  # none | fp16 | int8 | topk (top-k with error feedback)
    topk_fraction: float = 0.1  # topk: the share of values a client sends each round


@dataclass
class AvailabilityConfig:
    """Simulated client availability (rayfed.core.availability): who of the sampled reports back."""

    dropout: float = 0.0  # probability that a sampled client does not report (per round and client)
    speed_sigma: float = 0.0  # spread of the clients' persistent speeds (log-normal sigma; 0: all nominal)
    deadline: float | None = None  # drop a client whose round takes longer than this x the nominal time
    min_clients: int = 1  # a round with fewer reporting clients is skipped (the global prompt is kept)


@dataclass
class EvalConfig:
    eval_every: int = 1  # rounds between evaluations; round 0 and the last round always
    batch_size: int = 16
    max_new_tokens: int = 32  # upper bound; each batch stops at its longest target
    # Also evaluate the global prompt (and Ditto's personal prompts) on each client's own splits;
    # off: the global sets only (what a many-client run can afford every round).
    local: bool = True
    # Ditto's personal prompts on the global sets (eval.local): each client's seeded subsample of
    # this many examples of each set, the same ones personalize.global_eval_examples picks; null:
    # every client's prompt on the whole sets (clients x set size generations an evaluation).
    ditto_global_examples: int | None = None


@dataclass
class PersonalizeConfig:
    """After federated training, each client fine-tunes the global prompt on its own train split
    and is evaluated on its own test split (personalization) and the global test set (robustness)."""

    enabled: bool = False  # rayfed run: personalize the final global prompt at the end of the run
    name: str | None = None  # rayfed personalize: results go to RUN_DIR/personalize/<name> (None: from overrides)
    local_epochs: int = 1  # passes over the client's train split
    eval_every_epochs: int = 1  # curve resolution: evaluate at epoch 0 and every this many epochs
    batch_size: int = 8
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig("sgd", 0.316))  # 10^-0.5
    l2_strength: float = 0.0  # lambda: adds lambda/2 * ||p - global_prompt||^2 to the local objective
    # Interpolation ratios r scored at every evaluated epoch: p = (1 - r) * global + r * local.
    # r = 0 is the global prompt itself, r = 1 the fully personalized prompt.
    interp_ratios: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])
    # Robustness is scored on the global val/test sets; an int scores each client on its own
    # seeded subsample of that many examples instead (cheaper; noisier per client, see docs).
    global_eval_examples: int | None = None
    # Selection rule (rayfed.core.selection.select_reliable): the best local_val score (metric) among the
    # settings whose local gain over the un-personalized prompt is reliably positive and whose
    # global_val change stays above minus this tolerance, both by their paired 95% intervals;
    # none: the global prompt is kept. Test scores are reported, never used.
    global_tolerance: float = 0.01
    # Also score the validation splits (what the selection rule reads). Off: test splits only, half
    # the scoring, no selection (a study that reports fixed settings, e.g. configs/study/).
    validation: bool = True
    # Whose choice each site's adapter follows (personalize/NAME/adapters/): federation (one setting
    # for all, the rule above) | per_client (each client's own on its validation split, keeping the
    # global prompt unless a setting beats it reliably; rayfed.personalization.per_client). Both are
    # always scored in summary.json.
    selection: str = "federation"
    # The score both rules read: rouge_l (higher is better) | loss (lower is better: a gain is a
    # fall, and global_tolerance bounds the global loss's rise). With a few dozen validation
    # examples the loss's intervals are far narrower than ROUGE-L's, so it can decide where ROUGE-L
    # keeps the global prompt for want of evidence.
    metric: str = "rouge_l"


@dataclass
class RolloutConfig:
    """``rayfed rollout RUN_DIR``: the personalized prompts rolled out to the sites in stages, each
    stage's setting chosen on the validation data of the sites before it, and a guard that rolls a
    site back to the global prompt (rayfed.personalization.rollout)."""

    name: str | None = None  # results go to RUN_DIR/rollout/<name> (None: from the rollout.* overrides)
    pilot_sites: int = 2  # the first stage: a seeded pilot set of this many sites
    growth: float = 2.0  # each later stage has this many times the sites of the one before (the last: the rest)
    # The guard: a site serving a personalized prompt is rolled back when its change from the global
    # prompt on its stage window of held-back local_test examples falls below minus this margin.
    margin: float = 0.05
    metric: str = "rouge_l"  # what is chosen on and guarded: rouge_l | exact_match | loss
    # Simulated drift: from stage drift_stage on, these sites' held-back data are their global_test
    # examples (the federation's other tasks) instead of their own local_test examples.
    drift_sites: list[int] = field(default_factory=list)
    drift_stage: int = 1


@dataclass
class RuntimeConfig:
    executor: str = "ray"  # ray: client worker actors; local: every client in this process, for debugging
    # Worker actors, each holding one backbone and the shards of many clients; client i lives on
    # worker i % num_workers. None: one worker per client.
    num_workers: int | None = None
    num_cpus_per_worker: float = 0.25  # always explicit: an actor without it can hang Ray
    num_gpus_per_worker: float = 0.0  # fractional GPU per worker actor (0.125: 8 workers share a card)
    # Train (and evaluate) the clients a worker hosts in lockstep, their rows sharing backbone
    # passes grouped by length, each row with its own client's prompt; allclose to one client at
    # a time, not bitwise.
    batch_clients: bool = False
    max_batch_rows: int = 256  # batch_clients: rows in one pass at most (bounds activation memory)
    num_cpus_driver: float = 0.1
    torch_threads: int = 1  # torch threads in each client actor (local executor: all cores)
    # A worker actor that dies (killed, its process exits): retry: Ray restarts it and reruns the
    # call (same result, workers keep no state); drop: its clients leave this round's training
    # (evaluation is still retried); fail: the run stops naming the worker and its clients.
    on_client_failure: str = "retry"
    max_retries: int = 3  # restarts per worker actor (and reruns per call) before a failure is final
    # Ray node labels the worker and driver actors must land on (Ray's label_selector: {key: value},
    # "!value", "in(a,b)", "!in(a,b)"), e.g. {cpu-family: xeon} on nodes started with
    # `ray start --labels cpu-family=xeon`: one kind of machine, so a run repeats bit for bit.
    label_selector: dict[str, str] = field(default_factory=dict)


@dataclass
class RayConfig:
    address: str | None = None  # None: $RAY_ADDRESS if set (ray job submit), else a local cluster
    num_cpus: int | None = None  # local cluster only
    num_gpus: float | None = None  # local cluster only (can be faked on a CPU machine)
    include_dashboard: bool = False
    # Token authentication off (RAY_AUTH_MODE=disabled) lets anyone who reaches this machine's Ray
    # ports run code as you; rayfed warns once unless this accepts the risk.
    allow_unauthenticated: bool = False


@dataclass
class WandbConfig:
    """Weights & Biases. The API key is W&B's own: WANDB_API_KEY or a `wandb login`, never a config."""

    enabled: bool = False
    project: str = "rayfed"
    entity: str | None = None
    group: str | None = None  # None: the run name (tune: the search name, one run per trial)
    tags: list[str] = field(default_factory=list)
    # online | offline | disabled; None: online with WANDB_API_KEY or a `wandb login`, else offline
    mode: str | None = None
    init_timeout: float = 30.0  # seconds an online run waits for the W&B server before failing


@dataclass
class CheckpointConfig:
    """``rayfed resume RUN_DIR`` continues from the last checkpoint, bit for bit."""

    every: int = 1  # rounds between checkpoints (the last round always writes one)


@dataclass
class LoggingConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class SpaceParam:
    """One searched config key, in Ray Tune's own primitives."""

    type: str = "grid"  # grid | choice | uniform | loguniform
    values: list[Any] | None = None  # grid, choice
    low: float | None = None  # uniform, loguniform
    high: float | None = None


@dataclass
class TuneConfig:
    """``rayfed tune``: a Ray Tune search over config keys."""

    kind: str = "personalize"  # personalize: trials share one trained federation; federation: whole runs
    base_run: str | None = None  # personalize: a finished run directory (None: train one first)
    # Searched keys (dotted config keys, set in YAML). A scalar for a list key
    # (personalize.interp_ratios) means a one-element list: each trial scores one ratio.
    # Empty: the default space, l2 strength (log grid with 0) x interpolation ratio (rayfed.tuning).
    space: dict[str, SpaceParam] = field(default_factory=dict)
    searcher: str = "grid"  # grid (grid keys expanded; others sampled) | random | optuna (TPE) | optuna_multi
    num_samples: int = 1  # grid: repeats of the whole grid; random/optuna: trials
    max_concurrent_trials: int = 2
    scheduler: str = "none"  # none | asha (stops poor trials early on the per-epoch reports)
    grace_period: int = 1  # asha: rounds (federation) or epochs (personalize) before a trial may be stopped
    cpus_per_trial: float = 1.0  # the trial process itself (executor local: it runs every client)


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    seed: int = 0
    output_dir: str = "outputs/${name}"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    availability: AvailabilityConfig = field(default_factory=AvailabilityConfig)
    communication: CommunicationConfig = field(default_factory=CommunicationConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    personalize: PersonalizeConfig = field(default_factory=PersonalizeConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)


# Keys that were renamed: loading the old one fails with a pointer to the new one.
RENAMED = {
    "partition.alpha": "partition.concentration (the Dirichlet concentration)",
    "personalize.alphas": "personalize.interp_ratios (the global/local interpolation ratios)",
    "runtime.num_cpus_per_client": "runtime.num_cpus_per_worker (a worker actor hosts runtime.num_workers' "
                                   "share of the clients)",
    "runtime.num_gpus_per_client": "runtime.num_gpus_per_worker (a worker actor hosts runtime.num_workers' "
                                   "share of the clients)",
}


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
        merged = _merge(merged, read_yaml(path, "config file"), str(path))
    cfg = _finish(merged, overrides)
    cfg.data.path = absolute_data_path(cfg.data.path)
    return cfg


def absolute_data_path(path: str | None) -> str | None:
    """``data.path`` made absolute from the directory rayfed was started in: the processes that read
    it (a Tune trial, a study's Ray task) run in directories of their own."""
    return None if path is None else str(Path(path).expanduser().absolute())


MAX_CONFIG_BYTES = 1 << 20  # a config is a few KB; a larger file is a wrong path, refused before parsing


def read_yaml(path: str | Path, what: str) -> DictConfig:
    """A config or study file as a mapping of keys.

    Raises:
        ConfigError: naming the file when it is missing, a directory, over 1 MiB, not YAML, empty,
            or a YAML list or scalar instead of a mapping.
    """
    path = Path(path)
    if path.is_dir():
        example = "configs/study/quick.yaml" if what == "study file" else "configs/quickstart.yaml"
        raise ConfigError(f"{what} {path} is a directory; give a YAML file in it, such as {example}")
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{what} {path} is {size / 2**20:.1f} MiB; a config is a few KB of YAML (a wrong path?)")
    try:
        loaded = OmegaConf.load(path)
    except Exception as err:  # YAML syntax: the parser's message names the line
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: a {what} is a mapping of keys (name:, model:, ...), not a YAML list")
    if len(loaded) == 0:
        start = "configs/study/quick.yaml" if what == "study file" else "configs/quickstart.yaml"
        raise ConfigError(f"{path} is empty: it would run every default silently; start from {start}")
    return loaded


def config_from_mapping(mapping: dict[str, Any], source: str = "config",
                        values: dict[str, Any] | None = None) -> ExperimentConfig:
    """The config of a mapping already read from YAML (a section of another file, e.g. a study's
    ``experiment:``) with dotted keys set to typed ``values``, validated once all are applied;
    errors name ``source``."""
    merged = _merge(OmegaConf.structured(ExperimentConfig), OmegaConf.create(mapping), source)
    return _checked(_update(merged, values or {}, source))


def _finish(merged: DictConfig, overrides: list[str] | None) -> ExperimentConfig:
    for item in overrides or []:
        merged = _merge(merged, parse_override(item), f"override {item!r}")
    return _checked(merged)


def parse_override(item: str) -> DictConfig:
    """One ``key=value`` override as a mapping; a list is set whole (``key=[a,b]``), never by index.

    Raises:
        ConfigError: naming the override when it has no ``=``, indexes into a list or its value
        is not YAML (a flow list or mapping cut at a space by the shell, for example).
    """
    key = item.partition("=")[0]
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value{_ONE_WORD}")
    if "[" in key or any(part.isdigit() for part in key.split(".")):
        whole = re.split(r"\[|\.\d", key)[0]
        raise ConfigError(f"override {item!r}: key '{key}' indexes into a list; set the list whole, e.g. {whole}=[a,b]")
    try:
        return OmegaConf.from_dotlist([item])
    except OmegaConfBaseException as err:
        raise ConfigError(_describe(err, f"override {item!r}")) from None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"override {item!r}: key '{key}': its value is not valid YAML ({problem}){_ONE_WORD}"
                          ) from None


# Why an override is often cut in two: the shell splits words at spaces, and `ray job submit`
# joins its entrypoint's words with spaces before a shell splits them again.
_ONE_WORD = ("; an override must reach rayfed as one word: write a list without spaces (key=[0.5,1]) and a "
             "mapping key by key (key.sub=value), or quote it (through `ray job submit`, quote it twice)")


def _checked(node: DictConfig) -> ExperimentConfig:
    """The typed config of a merged node, validated."""
    try:
        cfg: ExperimentConfig = OmegaConf.to_object(node)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        raise ConfigError(_describe(err, "config")) from None
    validate(cfg)
    return cfg


def replace_keys(cfg: ExperimentConfig, values: dict[str, Any]) -> ExperimentConfig:
    """``cfg`` with dotted keys set to typed values (a Tune trial's sample, the keys a search
    phase fixes), coerced to each key's schema type and checked like a loaded config; no strings
    are parsed. ``cfg`` itself is left as it was.

    Raises:
        ConfigError: naming the key for an unknown key, a wrong type or an inconsistent value.
    """
    return _checked(_update(OmegaConf.structured(cfg), values, "config"))


def _update(node: DictConfig, values: dict[str, Any], source: str) -> DictConfig:
    """``node`` with each dotted key set to its value, type-checked by the schema."""
    for key, value in values.items():
        try:
            OmegaConf.update(node, key, value, merge=False)
        except OmegaConfBaseException as err:
            raise ConfigError(_describe(err, f"{source}: {key} = {value!r}")) from None
    return node


def check_overridable(overrides: list[str], allowed: tuple[str, ...], doing: str) -> None:
    """Refuse, naming the key, a ``key=value`` override outside the ``allowed`` key prefixes."""
    for item in overrides:
        key = item.split("=", 1)[0]
        if not key.startswith(allowed):
            raise ConfigError(f"key '{key}': cannot change when {doing} (only "
                              f"{', '.join(k + '*' for k in allowed)} may)")


# Keys that say where and how something ran, not what it computed (prefixes of dotted keys).
HOW_IT_RAN = ("name.", "output_dir.", "runtime.", "ray.", "logging.")


def flat_keys(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as dotted keys (``{"algorithm": {"rounds": 20}}`` -> ``algorithm.rounds``)."""
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in flat_keys(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def config_changes(have: ExperimentConfig, want: ExperimentConfig, ignore: tuple[str, ...] = HOW_IT_RAN,
                   ) -> list[tuple[str, Any, Any]]:
    """``(key, have's value, want's value)`` for every dotted key whose value differs, sorted, but
    keys under a prefix in ``ignore`` (``"runtime."``; a whole key as ``"name."``)."""
    def flat(cfg: ExperimentConfig) -> dict[str, Any]:
        return {k: v for k, v in flat_keys(asdict(cfg)).items() if not (k + ".").startswith(ignore)}

    a, b = flat(have), flat(want)
    return [(k, a.get(k), b.get(k)) for k in sorted({*a, *b}) if a.get(k) != b.get(k)]


def changes_text(changes: list[tuple[str, Any, Any]], have: str, want: str, limit: int = 6) -> str:
    """Up to ``limit`` changes as ``key: A {have}, B {want}`` joined by ``; `` (and how many more)."""
    text = "; ".join(f"{k}: {a!r} {have}, {b!r} {want}" for k, a, b in changes[:limit])
    return text + (f"; and {len(changes) - limit} more" if len(changes) > limit else "")


def to_yaml(cfg: ExperimentConfig) -> str:
    """The fully resolved config as YAML (written to ``output_dir/config.yaml``)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def _merge(base: DictConfig, extra: Any, source: str) -> DictConfig:
    for old, new in RENAMED.items():
        if OmegaConf.select(extra, old, default=None) is not None:
            raise ConfigError(f"{source}: key '{old}' was renamed to {new}")
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


FLOAT32_MAX = 3.4028234663852886e38  # prompts train in float32: a larger step size cannot be represented


def _check_lr(lr: float, key: str) -> None:
    _check(lr > 0 and math.isfinite(lr), key, f"must be a positive number, got {lr}")
    _check(lr < FLOAT32_MAX, key, f"{lr:g} does not fit a float32 step (at most {FLOAT32_MAX:.3g})")


def _choice(key: str, value: str, options: tuple[str, ...]) -> None:
    _check(value in options, key, f"{value!r} is not one of {', '.join(options)}")


def validate(cfg: ExperimentConfig) -> None:
    """Cross-field and range checks that types alone cannot express, section by section."""
    _check(0 <= cfg.seed < 2**32, "seed", f"must be an integer from 0 to 2**32 - 1, got {cfg.seed}")
    for check in (_validate_model_and_data, _validate_partition, _validate_algorithm, _validate_availability,
                  _validate_eval, _validate_personalize, _validate_rollout, _validate_runtime, _validate_outputs):
        check(cfg)


def _validate_model_and_data(cfg: ExperimentConfig) -> None:
    """The ``model:`` and ``data:`` sections."""
    m, d = cfg.model, cfg.data
    _check(m.num_virtual_tokens >= 1, "model.num_virtual_tokens", "must be >= 1")
    _choice("model.prompt_init", m.prompt_init, PROMPT_INITS)
    _choice("model.dtype", m.dtype, DTYPES)
    _choice("model.peft", m.peft, PEFT_METHODS)
    _check(m.lora_rank >= 1, "model.lora_rank", "must be >= 1")
    _check(m.lora_alpha > 0, "model.lora_alpha", "must be > 0")
    targets = m.lora_targets
    _check(targets is None or (len(targets) > 0 and all(isinstance(t, str) and t for t in targets)),
           "model.lora_targets", "must be null or a non-empty list of module names")
    _choice("communication.compress", cfg.communication.compress, COMPRESSIONS)
    _check(0 < cfg.communication.topk_fraction <= 1, "communication.topk_fraction", "must be in (0, 1]")
    _choice("data.source", d.source, DATA_SOURCES)
    _check(d.source not in ("sni", "sites") or bool(d.path), "data.path", f"is required when data.source is {d.source}")
    _check(d.max_examples_per_task >= 1, "data.max_examples_per_task", "must be >= 1")
    _check(d.max_source_tokens >= 1, "data.max_source_tokens", "must be >= 1")
    _check(d.max_target_tokens >= 2, "data.max_target_tokens", "must be >= 2 (target + EOS)")


def _validate_partition(cfg: ExperimentConfig) -> None:
    """The ``partition:`` section."""
    p = cfg.partition
    _check(p.num_clients >= 1, "partition.num_clients", "must be >= 1")
    _choice("partition.scheme", p.scheme, PARTITION_SCHEMES)
    _check(p.scheme != "site" or cfg.data.source == "sites", "partition.scheme",
           f"site needs records that name their site: data.source sites (got data.source {cfg.data.source})")
    _choice("partition.unit", p.unit, PARTITION_UNITS)
    _check(p.concentration > 0 and math.isfinite(p.concentration), "partition.concentration",
           "must be a positive number")
    _check(p.units_per_client >= 1, "partition.units_per_client", "must be >= 1")
    _check(p.train_examples >= 1, "partition.train_examples", "must be >= 1")
    _check(p.val_examples >= 0, "partition.val_examples", "must be >= 0")
    _check(p.test_examples >= 1, "partition.test_examples", "must be >= 1")
    _check(p.global_test_examples >= 1, "partition.global_test_examples", "must be >= 1")
    _check(p.global_val_examples >= 0, "partition.global_val_examples", "must be >= 0")


def _validate_algorithm(cfg: ExperimentConfig) -> None:
    """The ``algorithm:`` section and its optimizers."""
    p, a = cfg.partition, cfg.algorithm
    _choice("algorithm.name", a.name, ALGORITHM_NAMES)
    _check(a.rounds >= 1, "algorithm.rounds", "must be >= 1")
    _check(1 <= a.clients_per_round <= p.num_clients, "algorithm.clients_per_round",
           f"must be between 1 and partition.num_clients ({p.num_clients}), got {a.clients_per_round}")
    _check((a.local_steps is None) != (a.local_epochs is None), "algorithm.local_steps",
           "set exactly one of algorithm.local_steps and algorithm.local_epochs (the other to null)")
    _check(a.local_steps is None or a.local_steps >= 1, "algorithm.local_steps", "must be >= 1")
    _check(a.local_epochs is None or a.local_epochs >= 1, "algorithm.local_epochs", "must be >= 1")
    _check(a.batch_size >= 1, "algorithm.batch_size", "must be >= 1")
    _check(a.proximal_mu >= 0 and math.isfinite(a.proximal_mu), "algorithm.proximal_mu", "must be >= 0")
    _check(a.proximal_mu == 0 or a.name == "fedprox", "algorithm.proximal_mu",
           f"only fedprox has a proximal term; set algorithm.name=fedprox (it is {a.name})")
    _check(a.ditto_lambda >= 0 and math.isfinite(a.ditto_lambda), "algorithm.ditto_lambda", "must be >= 0")
    _check(a.ditto_lambda == 0.1 or a.name == "ditto", "algorithm.ditto_lambda",
           f"only ditto keeps a personal prompt per client; set algorithm.name=ditto (it is {a.name})")
    for key, opt, options in (("algorithm.client_optimizer", a.client_optimizer, OPTIMIZERS),
                              ("algorithm.server_optimizer", a.server_optimizer, SERVER_OPTIMIZERS)):
        _choice(f"{key}.name", opt.name, options)
        _check_lr(opt.lr, f"{key}.lr")
        _check(0 <= opt.momentum < 1, f"{key}.momentum", "must be in [0, 1)")
        _check(opt.weight_decay >= 0, f"{key}.weight_decay", "must be >= 0")


def _validate_availability(cfg: ExperimentConfig) -> None:
    """The ``availability:`` section."""
    a = cfg.algorithm
    v = cfg.availability
    _check(0 <= v.dropout < 1, "availability.dropout", "must be in [0, 1)")
    _check(v.speed_sigma >= 0, "availability.speed_sigma", "must be >= 0")
    _check(v.deadline is None or v.deadline > 0, "availability.deadline", "must be > 0 or null (no deadline)")
    _check(1 <= v.min_clients <= a.clients_per_round, "availability.min_clients",
           f"must be between 1 and algorithm.clients_per_round ({a.clients_per_round})")


def _validate_eval(cfg: ExperimentConfig) -> None:
    """The ``eval:`` section."""
    e = cfg.eval
    _check(e.eval_every >= 1, "eval.eval_every", "must be >= 1")
    _check(e.batch_size >= 1, "eval.batch_size", "must be >= 1")
    _check(e.max_new_tokens >= 1, "eval.max_new_tokens", "must be >= 1")
    _check(e.ditto_global_examples is None or e.ditto_global_examples >= 1, "eval.ditto_global_examples",
           "must be >= 1 or null (all)")


def _check_folder_name(key: str, name: str | None, parent: str) -> None:
    _check(name is None or (name.strip() not in ("", ".", "..") and "/" not in name and "\\" not in name), key,
           f"must be a directory name (not empty, '.' or '..', no '/'): it names the folder under the run's {parent}")


def _validate_rollout(cfg: ExperimentConfig) -> None:
    """The ``rollout:`` section."""
    r, n = cfg.rollout, cfg.partition.num_clients
    _check(1 <= r.pilot_sites <= n, "rollout.pilot_sites", f"must be from 1 to partition.num_clients ({n})")
    _check(r.growth >= 1, "rollout.growth", "must be >= 1 (each stage at least as large as the one before)")
    _check(r.margin >= 0, "rollout.margin", "must be >= 0")
    _choice("rollout.metric", r.metric, ("rouge_l", "exact_match", "loss"))
    for site in r.drift_sites:
        _check(0 <= site < n, "rollout.drift_sites", f"every site must be a client id from 0 to {n - 1}, got {site}")
    _check(r.drift_stage >= 1, "rollout.drift_stage", "must be >= 1 (the pilot stage is 0)")
    _check_folder_name("rollout.name", r.name, "rollout/")


def _validate_personalize(cfg: ExperimentConfig) -> None:
    """The ``personalize:`` section."""
    z = cfg.personalize
    _check(z.local_epochs >= 1, "personalize.local_epochs", "must be >= 1")
    _check(z.eval_every_epochs >= 1, "personalize.eval_every_epochs", "must be >= 1")
    _check(z.global_eval_examples is None or z.global_eval_examples >= 1, "personalize.global_eval_examples",
           "must be >= 1 or null (all)")
    _check(z.global_tolerance >= 0, "personalize.global_tolerance", "must be >= 0")
    _check_folder_name("personalize.name", z.name, "personalize/")
    _check(z.batch_size >= 1, "personalize.batch_size", "must be >= 1")
    _choice("personalize.optimizer.name", z.optimizer.name, OPTIMIZERS)
    _check_lr(z.optimizer.lr, "personalize.optimizer.lr")
    _check(z.l2_strength >= 0, "personalize.l2_strength", "must be >= 0")
    _choice("personalize.selection", z.selection, ("federation", "per_client"))
    _choice("personalize.metric", z.metric, SELECTION_METRICS)
    warn_unstable_l2(z.optimizer, z.l2_strength)
    _check(len(z.interp_ratios) >= 1, "personalize.interp_ratios", "needs at least one interpolation ratio")
    for ratio in z.interp_ratios:
        _check(0.0 <= ratio <= 1.0, "personalize.interp_ratios", f"every ratio must be in [0, 1], got {ratio}")
    _check(len(set(z.interp_ratios)) == len(z.interp_ratios), "personalize.interp_ratios", "has duplicates")


def _validate_runtime(cfg: ExperimentConfig) -> None:
    """The ``runtime:`` section."""
    p, r = cfg.partition, cfg.runtime
    _choice("runtime.executor", r.executor, EXECUTORS)
    _check(r.num_workers is None or 1 <= r.num_workers <= p.num_clients, "runtime.num_workers",
           f"must be between 1 and partition.num_clients ({p.num_clients}), or null (one per client)")
    _check(r.num_cpus_per_worker > 0, "runtime.num_cpus_per_worker",
           "must be > 0 (Ray actors need an explicit CPU share)")
    _check(r.num_gpus_per_worker >= 0, "runtime.num_gpus_per_worker", "must be >= 0")
    _check(r.max_batch_rows >= 1, "runtime.max_batch_rows", "must be >= 1")
    _choice("runtime.on_client_failure", r.on_client_failure, FAILURE_POLICIES)
    _check(r.max_retries >= 0, "runtime.max_retries", "must be >= 0")
    _check(r.num_cpus_driver > 0, "runtime.num_cpus_driver", "must be > 0")
    _check(r.torch_threads >= 1, "runtime.torch_threads", "must be >= 1")
    for key, value in r.label_selector.items():
        _check(bool(key) and isinstance(value, str) and value.strip("!") != "", f"runtime.label_selector.{key}",
               "must map a Ray node label to a value, '!value', 'in(a,b)' or '!in(a,b)'")
    if r.num_gpus_per_worker == 0:
        warn_emulated_half(cfg.model.dtype)


# The instructions that run each half-precision dtype natively on an x86 CPU (Linux /proc/cpuinfo).
_NATIVE_HALF = {"bfloat16": ("avx512_bf16", "amx_bf16"), "float16": ("avx512_fp16", "amx_fp16")}


def cpu_flags() -> set[str] | None:
    """This machine's x86 CPU flags, or None where /proc/cpuinfo does not list them."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return None


def warn_emulated_half(dtype: str) -> None:
    """Warn when a half-precision backbone would run on a CPU without instructions for it: torch
    then emulates it, and on an AVX2-only CPU a SmolLM2 training step took 15 times as long as in
    float32 (docs/scale.md). Elsewhere (a GPU, a CPU with the instructions, a CPU whose flags are
    not listed) nothing is said."""
    flags = cpu_flags() if dtype in _NATIVE_HALF else None
    if flags is not None and not flags & set(_NATIVE_HALF[dtype]):
        warnings.warn(f"key 'model.dtype': {dtype} on this CPU, which has none of {', '.join(_NATIVE_HALF[dtype])}, is "
                      "emulated and slower than float32 (a SmolLM2 training step 15x, an evaluation 4.6x on an AVX2 "
                      "CPU); keep float32 here, or use it on a GPU (runtime.num_gpus_per_worker) or a CPU with those "
                      "instructions", UserWarning, stacklevel=3)


def _validate_outputs(cfg: ExperimentConfig) -> None:
    """The ``checkpoint:``, ``logging:`` and ``tune:`` sections."""
    _check(cfg.checkpoint.every >= 1, "checkpoint.every", "must be >= 1")
    w = cfg.logging.wandb
    _check(w.init_timeout > 0, "logging.wandb.init_timeout", "must be > 0 seconds")
    _check(w.mode is None or w.mode in WANDB_MODES, "logging.wandb.mode",
           f"{w.mode!r} is not one of {', '.join(WANDB_MODES)} (or null)")
    validate_tune(cfg.tune)

def warn_unstable_l2(opt: OptimizerConfig, strength: float) -> None:
    """Warn when plain SGD cannot hold the l2 pull: its step scales the prompt's offset from the
    global prompt by ``1 - lr * strength`` (heavy-ball momentum widens the stable range to
    ``2 * (1 + momentum)``), so past that limit the offset grows every step. A warning, not an
    error: a search may sample such a point, and it should score badly rather than stop."""
    if opt.name != "sgd" or strength <= 0:
        return
    limit = 2 * (1 + opt.momentum)
    if opt.lr * strength >= limit:
        warnings.warn(f"key 'personalize.l2_strength': personalize.optimizer.lr x l2_strength = "
                      f"{opt.lr:g} x {strength:g} = {opt.lr * strength:.3g} >= {limit:g}, so each SGD step pushes "
                      f"the prompt past the global one by more than it was off and the pull diverges; keep the "
                      f"product below {limit:g}", UserWarning, stacklevel=3)


def validate_tune(t: TuneConfig) -> None:
    """The ``tune:`` section's own checks; whether the searched keys exist is checked when the
    search starts (rayfed.tuning), where each sampled value is applied to the config."""
    _choice("tune.kind", t.kind, TUNE_KINDS)
    _choice("tune.searcher", t.searcher, SEARCHERS)
    _choice("tune.scheduler", t.scheduler, SCHEDULERS)
    _check(t.num_samples >= 1, "tune.num_samples", "must be >= 1")
    _check(t.max_concurrent_trials >= 1, "tune.max_concurrent_trials", "must be >= 1")
    _check(t.grace_period >= 1, "tune.grace_period", "must be >= 1")
    _check(t.cpus_per_trial > 0, "tune.cpus_per_trial", "must be > 0")
    for key, param in t.space.items():
        where = f"tune.space.{key}"
        _choice(f"{where}.type", param.type, SPACE_TYPES)
        if param.type in ("grid", "choice"):
            _check(bool(param.values), f"{where}.values", f"a {param.type} needs a non-empty list of values")
        else:
            _check(param.low is not None and param.high is not None, where, f"a {param.type} needs low and high")
            _check(param.low < param.high, where, f"low ({param.low}) must be below high ({param.high})")
            _check(param.type != "loguniform" or param.low > 0, f"{where}.low", "loguniform needs low > 0")
        _check(not (t.searcher.startswith("optuna") and param.type == "grid"), f"{where}.type",
               "Optuna samples its space: use choice instead of grid")
