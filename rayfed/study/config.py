"""The study file: what ``rayfed study CONFIG`` runs (see configs/study/).

Every federated run is ``experiment:`` plus its algorithm's ``set:`` keys, its learning rate,
the seed and the Dirichlet concentration; every personalization is a ``personalize.*`` override
of a finished run. The grids are fixed here, before any result exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rayfed.config import (
    ConfigError,
    ExperimentConfig,
    absolute_data_path,
    config_from_mapping,
    parse_override,
    read_yaml,
    replace_keys,
)


@dataclass
class ArmConfig:
    """One federated algorithm; its learning rate is chosen on global validation ROUGE-L
    (rayfed.study.layout.lr_choice: the default unless another is reliably better)."""

    set: dict[str, Any] = field(default_factory=dict)  # config keys that make this algorithm
    lr_key: str = "algorithm.client_optimizer.lr"  # the key whose value the lr grid sets
    lrs: list[float] = field(default_factory=list)  # more than one: selected on validation (first seed)
    default_lr: float | None = None  # kept unless another lr is reliably better; None: the middle of lrs


@dataclass
class StudyPersonalizeConfig:
    main_algorithm: str = "fedavg_adam"  # claims 1, 2 and 4 personalize this algorithm's prompt
    lrs: list[float] = field(default_factory=lambda: [0.316, 0.1, 0.0316])  # claim 1-2 curves, high first
    epochs: int = 6  # length of each lr curve
    eval_every_epochs: int = 1
    robustness_lr: float = 0.316  # claim 3: every algorithm's prompt is personalized at this lr
    few_epochs: int = 1  # claim 4: "few local updates" = this many epochs at lrs[0]
    l2_strengths: list[float] = field(default_factory=lambda: [0.1, 1.0, 10.0])  # claim 4 (plus 0)
    interp_ratios: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])  # claim 4 (plus 1)
    set: dict[str, Any] = field(default_factory=dict)  # other personalize.* keys for every job


@dataclass
class PointsConfig:
    """Scored points of the study's personalizations: every ``jobs`` x ``epochs`` x ``ratios``."""

    # personalization names (study.config.personalize_jobs), or "@ditto": a Ditto arm's clients' own
    # prompts (its run's ditto_scores.safetensors, eval.local on), whose epochs are the run's rounds
    jobs: list[str] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    ratios: list[float] = field(default_factory=lambda: [1.0])  # interpolation ratios (1: the local prompt)
    algorithm: str = ""  # whose run's personalizations; "" = personalize.main_algorithm


@dataclass
class ComparisonConfig:
    """One pre-registered primary comparison (rayfed.study.primary): ``a`` against ``b``."""

    name: str = ""
    kind: str = "difference"  # difference: mean of a minus mean of b on `split`; frontier: a's gap above b's frontier
    a: PointsConfig = field(default_factory=PointsConfig)
    b: PointsConfig = field(default_factory=PointsConfig)
    split: str = "global_test"  # difference only; a frontier is local_test against global_test
    from_start: bool = False  # each point minus its own personalization's epoch-0 point (changes, not levels)
    direction: str = "greater"  # the claim's prediction for a - b: greater | less | equivalent
    margin: float = 0.0  # equivalent only: the difference the claim calls none
    effect: float = 0.05  # the smallest true effect (ROUGE-L) the study is sized to find


@dataclass
class VerdictConfig:
    """How the claims are decided, fixed before the run: Holm over every primary comparison at
    every primary concentration, at family-wise ``alpha``."""

    alpha: float = 0.05
    power: float = 0.8  # each claim's chance of "reproduced" at its effect sizes (the sizing target)
    draws: int = 4000  # bootstrap replicates
    concentrations: list[float] = field(default_factory=list)  # primary levels; empty = every level
    claims: dict[str, list[ComparisonConfig]] = field(default_factory=dict)  # claim number -> comparisons


@dataclass
class StudyConfig:
    name: str = "study"
    output_dir: str = "outputs/${name}"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    concentrations: list[float] = field(default_factory=lambda: [0.1, 10.0])  # Dirichlet, over partition.unit
    experiment: dict[str, Any] = field(default_factory=dict)  # any rayfed run keys, shared by every run
    algorithms: dict[str, ArmConfig] = field(default_factory=dict)
    personalize: StudyPersonalizeConfig = field(default_factory=StudyPersonalizeConfig)
    verdicts: VerdictConfig = field(default_factory=VerdictConfig)
    # Comparisons shown with their 95% intervals at every concentration and never voted: secondary
    # or post-hoc questions (baselines beside fine-tuning), outside the claims' Holm family.
    comparisons: list[ComparisonConfig] = field(default_factory=list)
    # How many federated runs (each followed by its personalizations) run at once. Above 1, each
    # is a Ray task that reserves its process (cpus_per_run) and its actors in one placement group,
    # so runs spread over a cluster's nodes or share a GPU; the numbers do not depend on it.
    parallel_runs: int = 1
    cpus_per_run: float = 1.0  # the run's own process (runtime.executor=local: it trains every client)


def load_study(path: str | Path, overrides: list[str] | None = None) -> StudyConfig:
    """Read and check a study file; every federated run's config is built once here, so a bad
    key fails before anything runs, naming the key.

    Raises:
        ConfigError: an unknown or bad key (of the study or of its experiment section).
    """
    path = Path(path)
    loaded = read_study_file(path)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(StudyConfig), loaded)
        for item in overrides or []:
            merged = OmegaConf.merge(merged, parse_override(item))
        study: StudyConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        raise ConfigError(f"{path}: key '{key}': {str(err).splitlines()[0]}" if key else f"{path}: {err}") from None
    data = study.experiment.get("data")
    if isinstance(data, dict) and data.get("path") is not None:  # the runs may be Ray tasks elsewhere
        study.experiment = {**study.experiment, "data": {**data, "path": absolute_data_path(str(data["path"]))}}
    check_study(study, str(path))
    return study


def read_study_file(path: Path, seen: tuple[Path, ...] = ()) -> Any:
    """A study file's keys over those of the file its ``extends:`` names (a path relative to it),
    recursively: a post-hoc study adds arms or comparisons to a registered one without copying it.

    Raises:
        ConfigError: naming the key when the extended file is missing or extends back.
    """
    loaded = read_yaml(path, "study file")
    base = loaded.pop("extends", None)
    if base is None:
        return loaded
    base_path = path.parent / str(base)
    if base_path.resolve() in (path.resolve(), *seen):
        raise ConfigError(f"{path}: key 'extends': {base} extends back to {path.name}")
    if not base_path.is_file():
        raise ConfigError(f"{path}: key 'extends': no study file {base_path}")
    return OmegaConf.merge(read_study_file(base_path, (*seen, path.resolve())), loaded)


def check_study(s: StudyConfig, source: str) -> None:
    p = s.personalize
    if not s.seeds or len(set(s.seeds)) != len(s.seeds):
        raise ConfigError(f"{source}: key 'seeds': needs distinct seeds")
    if not all(0 <= seed < 2**32 for seed in s.seeds):
        raise ConfigError(f"{source}: key 'seeds': each must be an integer from 0 to 2**32 - 1, got {s.seeds}")
    if not s.concentrations or any(c <= 0 for c in s.concentrations):
        raise ConfigError(f"{source}: key 'concentrations': needs positive Dirichlet concentrations")
    if not s.algorithms:
        raise ConfigError(f"{source}: key 'algorithms': needs at least one federated algorithm")
    if s.parallel_runs < 1 or s.cpus_per_run <= 0:
        raise ConfigError(f"{source}: key '{'parallel_runs' if s.parallel_runs < 1 else 'cpus_per_run'}': "
                          "needs parallel_runs >= 1 and cpus_per_run > 0")
    if p.main_algorithm not in s.algorithms:
        raise ConfigError(f"{source}: key 'personalize.main_algorithm': {p.main_algorithm!r} is not one of "
                          f"{', '.join(s.algorithms)}")
    for label, arm in s.algorithms.items():
        if not arm.lrs or any(lr <= 0 for lr in arm.lrs):
            raise ConfigError(f"{source}: key 'algorithms.{label}.lrs': needs positive learning rates")
        if arm.default_lr is not None and arm.default_lr not in arm.lrs:
            raise ConfigError(f"{source}: key 'algorithms.{label}.default_lr': must be one of its lrs")
    if len(p.lrs) < 2 or p.lrs != sorted(p.lrs, reverse=True):
        raise ConfigError(f"{source}: key 'personalize.lrs': needs two or more rates, highest first")
    if p.robustness_lr not in p.lrs:
        raise ConfigError(f"{source}: key 'personalize.robustness_lr': must be one of personalize.lrs")
    if not 1 <= p.few_epochs <= p.epochs:
        raise ConfigError(f"{source}: key 'personalize.few_epochs': must be between 1 and personalize.epochs")
    if p.few_epochs % p.eval_every_epochs:
        raise ConfigError(f"{source}: key 'personalize.few_epochs': must be a multiple of "
                          f"personalize.eval_every_epochs (the curves must score it)")
    if any(v <= 0 for v in p.l2_strengths) or any(not 0 < r < 1 for r in p.interp_ratios):
        raise ConfigError(f"{source}: key 'personalize.l2_strengths'/'interp_ratios': l2 strengths > 0 and "
                          f"ratios strictly between 0 and 1 (0 and 1 are always scored)")
    for label in s.algorithms:  # every run and personalization config must load
        for conc in s.concentrations:
            cfg = run_config(s, label, conc, s.seeds[0], s.algorithms[label].lrs[0], source)
            for values in personalize_jobs(s, label).values():
                try:
                    replace_keys(cfg, values)
                except ConfigError as err:
                    raise ConfigError(f"{source}: personalize: {err}") from None
    check_verdicts(s, source)
    exp = run_config(s, p.main_algorithm, s.concentrations[0], s.seeds[0], s.algorithms[p.main_algorithm].lrs[0],
                     source)
    if exp.partition.val_examples < 1 or exp.partition.global_val_examples < 1:
        raise ConfigError(f"{source}: key 'experiment.partition.val_examples': the study selects on validation "
                          "data; set partition.val_examples and partition.global_val_examples above 0")


def check_verdicts(s: StudyConfig, source: str) -> None:
    """Every primary comparison (and every shown one, ``comparisons:``) names jobs, epochs and
    ratios the study scores."""
    v = s.verdicts
    if not 0 < v.alpha < 1 or not 0 < v.power < 1 or v.draws < 100:
        raise ConfigError(f"{source}: key 'verdicts': needs 0 < alpha < 1, 0 < power < 1 and draws >= 100")
    if any(c not in s.concentrations for c in v.concentrations):
        raise ConfigError(f"{source}: key 'verdicts.concentrations': each must be one of concentrations")
    for claim, comparisons in v.claims.items():
        if claim not in {"1", "2", "3", "4"}:
            raise ConfigError(f"{source}: key 'verdicts.claims.{claim}': the study's claims are 1 to 4")
        for i, c in enumerate(comparisons):
            check_comparison(s, c, f"verdicts.claims.{claim}[{i}]", source)
    for i, c in enumerate(s.comparisons):
        if not c.name:
            raise ConfigError(f"{source}: key 'comparisons[{i}].name': every shown comparison needs a name")
        check_comparison(s, c, f"comparisons[{i}]", source)


def check_comparison(s: StudyConfig, c: ComparisonConfig, key: str, source: str) -> None:
    p = s.personalize
    if c.kind not in ("difference", "frontier") or c.direction not in ("greater", "less", "equivalent"):
        raise ConfigError(f"{source}: key '{key}': kind is difference or frontier, direction greater, "
                          "less or equivalent")
    if (c.direction == "equivalent") != (c.margin > 0) or c.effect <= 0:
        raise ConfigError(f"{source}: key '{key}': an equivalent comparison needs margin > 0 (others 0), "
                          "and effect must be > 0")
    if c.kind == "difference" and c.split not in ("local_test", "global_test"):
        raise ConfigError(f"{source}: key '{key}.split': local_test or global_test")
    scored = set(range(0, p.epochs + 1, p.eval_every_epochs))
    for side, pts in (("a", c.a), ("b", c.b)):
        label = pts.algorithm or p.main_algorithm
        jobs = personalize_jobs(s, label) if label in s.algorithms else {}
        if not pts.jobs or not pts.ratios:
            raise ConfigError(f"{source}: key '{key}.{side}': needs jobs and ratios")
        for job in pts.jobs:
            if job == DITTO_POINTS:
                _check_ditto_points(s, label, pts, c, f"{key}.{side}", source)
                continue
            epochs = scored if not job.startswith("few,") else {0, p.few_epochs}
            if job not in jobs or not pts.epochs or not set(pts.epochs) <= epochs or \
                    not set(pts.ratios) <= set(jobs[job]["personalize.interp_ratios"]):
                raise ConfigError(f"{source}: key '{key}.{side}': {label!r} has no personalization {job!r} "
                                  f"scored at epochs {pts.epochs}, ratios {pts.ratios} (its jobs: "
                                  f"{', '.join([*jobs, DITTO_POINTS])})")


DITTO_POINTS = "@ditto"  # a Ditto arm's clients' own prompts, as points of a comparison


def _check_ditto_points(s: StudyConfig, label: str, pts: PointsConfig, c: ComparisonConfig, key: str,
                        source: str) -> None:
    """``@ditto`` points need a Ditto arm that scores its own prompts (``eval.local``), at rounds
    it evaluates (0, every ``eval.eval_every``, the last), ratio 1, and no ``from_start``."""
    if label not in s.algorithms:
        raise ConfigError(f"{source}: key '{key}.algorithm': {label!r} is not one of the study's algorithms")
    cfg = run_config(s, label, s.concentrations[0], s.seeds[0], s.algorithms[label].lrs[0], source)
    a = cfg.algorithm
    if a.name != "ditto" or not cfg.eval.local:
        raise ConfigError(f"{source}: key '{key}': {DITTO_POINTS} reads a Ditto run's own prompts; {label!r} runs "
                          f"algorithm.name={a.name} with eval.local={cfg.eval.local} (needs ditto and true)")
    rounds = {0, a.rounds, *range(0, a.rounds + 1, cfg.eval.eval_every)}
    if not pts.epochs or not set(pts.epochs) <= rounds or pts.ratios != [1.0] or c.from_start:
        raise ConfigError(f"{source}: key '{key}': {DITTO_POINTS}'s epochs are the rounds its run evaluates "
                          f"({sorted(rounds)}), its ratio 1.0, and it has no from_start (its round 0 is the "
                          f"untrained prompt); got epochs {pts.epochs}, ratios {pts.ratios}")


def run_config(s: StudyConfig, label: str, concentration: float, seed: int, lr: float,
               source: str = "study", output_dir: str | None = None) -> ExperimentConfig:
    """The config of one federated run of the study: ``experiment:`` with its algorithm's ``set:``
    keys, the learning rate, the concentration and the seed."""
    arm = s.algorithms[label]
    values = {**arm.set, arm.lr_key: lr, "partition.concentration": concentration, "seed": seed,
              "name": f"{s.name}-{label}-c{concentration:g}-lr{lr:g}-seed{seed}", "output_dir": output_dir or "."}
    if OmegaConf.select(OmegaConf.create(s.experiment), "logging.wandb.group") is None:
        values["logging.wandb.group"] = s.name  # W&B: the study's runs side by side
    try:
        return config_from_mapping(s.experiment, f"{source}: experiment (algorithm {label})", values)
    except ConfigError as err:
        raise ConfigError(str(err)) from None


def personalize_jobs(s: StudyConfig, label: str | None = None) -> dict[str, dict[str, Any]]:
    """The personalizations of one finished run of algorithm ``label``, by name, each the typed
    ``personalize.*`` values it sets on the run's config. The main algorithm's run gets the lr
    curves (ratio 1) and, for claim 4, the few-update runs (l2 = 0 scoring every interpolation
    ratio, and one run per l2 strength); the others only the curve at ``robustness_lr`` (claim 3).
    ``label`` None: the main algorithm's."""
    p = s.personalize
    common = {f"personalize.{k}": v for k, v in p.set.items()}
    jobs = {}
    for lr in p.lrs if label in (None, p.main_algorithm) else [p.robustness_lr]:
        jobs[f"lr={lr:g}"] = {**common, "personalize.optimizer.lr": lr, "personalize.local_epochs": p.epochs,
                              "personalize.eval_every_epochs": p.eval_every_epochs,
                              "personalize.l2_strength": 0.0, "personalize.interp_ratios": [1.0]}
    if label in (None, p.main_algorithm):
        few = {**common, "personalize.optimizer.lr": p.lrs[0], "personalize.local_epochs": p.few_epochs,
               "personalize.eval_every_epochs": p.few_epochs}
        jobs["few,l2=0"] = {**few, "personalize.l2_strength": 0.0,
                            "personalize.interp_ratios": sorted({*p.interp_ratios, 1.0})}
        for l2 in p.l2_strengths:
            jobs[f"few,l2={l2:g}"] = {**few, "personalize.l2_strength": l2, "personalize.interp_ratios": [1.0]}
    return {name: {**values, "personalize.name": name} for name, values in jobs.items()}
