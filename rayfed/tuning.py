"""``rayfed tune``: a Ray Tune search over config keys. The only module that imports ``ray.tune``.

Two kinds of trial:

- ``personalize``: the federation is trained once (or taken from ``tune.base_run``) and every
  trial personalizes that same global prompt with its own settings, reporting after each
  evaluated epoch. Trained local prompts are kept in ``OUT/local_prompts/`` under a hash of the
  settings that train them, so trials that differ only in the interpolation ratio (or in how
  they are scored) load them instead of retraining. Each trial's personalization is written to
  ``OUT/trials/<trial id>/``: a search writes nothing into the run it reads.
- ``federation``: each trial is a whole federated run (any key may be searched), reporting
  after each evaluated round. Its driver and client actors are reserved as placement-group
  bundles, so trials never wait on each other's actors.

Every trial reports under the same names (``local_val_rouge_l``, ``global_val_rouge_l``, their
test twins, and the structured metrics), so Tune's searchers and schedulers compare trials.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from rayfed.config import ConfigError, ExperimentConfig, SpaceParam, TuneConfig, replace_keys, to_yaml
from rayfed.core.selection import (
    pareto_mask,
    reliable_pareto_mask,
    reliable_rule_text,
    rule_text,
    select_best,
    select_reliable,
)
from rayfed.errors import quiet_worker_exit
from rayfed.experiment import run_experiment
from rayfed.names import (
    DITTO,
    EVAL,
    GLOBAL_SPLITS,
    GLOBAL_VAL,
    LOCAL_VAL,
    OBJECTIVES,
    SPLITS,
    metric_key,
    objective,
    objectives_of,
)
from rayfed.outputs.checkpoint import CHECKPOINT
from rayfed.outputs.lock import writing
from rayfed.outputs.search_dir import open_search_dir
from rayfed.personalization.phase import load_finished_run, personalize_run
from rayfed.runtime.placement import bundle_selectors, check_bundles_fit, run_bundles

if TYPE_CHECKING:
    import torch

# The design card's search: l2 strength on a log grid that includes 0, x interpolation ratio.
DEFAULT_SPACE = {
    "personalize.l2_strength": SpaceParam("grid", [0.0, 0.01, 0.1, 1.0]),
    "personalize.interp_ratios": SpaceParam("grid", [0.25, 0.5, 0.75, 1.0]),
}
RATIO_KEY = "personalize.interp_ratios"
LOCAL, GLOBAL = LOCAL_VAL, GLOBAL_VAL


class SearchInterrupted(RuntimeError):
    """The search was stopped (Ctrl-C) before every trial finished; ``--resume`` continues it."""


def run_search(cfg: ExperimentConfig, *, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) the search configured in ``cfg.tune``; write results.csv, pareto.csv,
    search.json and pareto.png into ``cfg.output_dir`` and return search.json's content.

    Args:
        resume: Continue the search in ``output_dir`` (refused when it was started with other
            settings: ``rayfed.outputs.search_dir``).
        overwrite: Start over in an ``output_dir`` that holds a search (otherwise refused).
    """
    out = Path(cfg.output_dir).resolve()
    with writing(out, "output_dir"):  # one process at a time writes a search directory
        open_search_dir(cfg, out, resume=resume, overwrite=overwrite)
        return _run_search(cfg, out, resume=resume)


def _run_search(cfg: ExperimentConfig, out: Path, *, resume: bool) -> dict[str, Any]:
    from ray import tune

    from rayfed.runtime.ray_backend import placeable_resources, start_ray

    t = cfg.tune
    # The ratio varies slowest, so concurrent trials train different local prompts and the later
    # trials (other ratios) find them in the cache instead of waiting on each other.
    space = dict(sorted((dict(t.space) or DEFAULT_SPACE).items(), key=lambda kv: kv[0] != RATIO_KEY))
    check_space(cfg, space)
    (out / "config.yaml").write_text(to_yaml(cfg))
    start_ray(cfg.ray)
    base_run = prepare_base_run(cfg, out) if t.kind == "personalize" else None
    resources = run_bundles(cfg, cfg.tune.cpus_per_trial)
    check_bundles_fit(cfg, resources, placeable_resources(cfg.runtime.label_selector), "one trial",
                      "tune.cpus_per_trial")

    trainable = tune.with_resources(_trainable(cfg, out, base_run),
                                    tune.PlacementGroupFactory(resources, **bundle_selectors(cfg, resources)))
    experiment = out / "tune"
    if resume and tune.Tuner.can_restore(str(experiment)):
        tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_errored=True)
    else:
        if resume:
            print(f"rayfed: nothing to resume in {experiment}; starting the search")
        tuner = tune.Tuner(trainable, param_space=param_space(space),
                           tune_config=_tune_config(cfg), run_config=tune.RunConfig(
                               name="tune", storage_path=str(out), verbose=1,
                               failure_config=tune.FailureConfig(max_failures=0)))
    grid = tuner.fit()
    expected = t.num_samples * math.prod(len(p.values or []) for p in space.values() if p.type == "grid")
    if len(grid) < expected or grid.num_terminated + grid.num_errors < len(grid):  # Ctrl-C: Tune saved its state
        raise SearchInterrupted(f"the search stopped after {grid.num_terminated} of {expected} trials; its state "
                                f"is in {experiment}: continue with `rayfed tune CONFIG --resume` (same overrides)")
    return write_results(cfg, out, list(space), [(r.metrics or {}, r.config or {}, r.error) for r in grid])


def check_space(cfg: ExperimentConfig, space: dict[str, SpaceParam]) -> None:
    """Fail before any trial runs: every searched key must exist and accept the values, and a
    personalize search needs validation splits, one ratio per trial, and personalize.* keys only."""
    for key, param in space.items():
        values = param.values if param.values else [param.low, param.high]
        for value in values:
            try:
                replace_keys(_shared(cfg), trial_values(cfg, {key: value}))
            except ConfigError as err:
                raise ConfigError(f"tune.space.{key}: value {value!r} does not apply: {err}") from None
    if cfg.tune.kind == "personalize":
        for key in space:
            if not key.startswith(("personalize.", "eval.")):
                raise ConfigError(f"tune.space.{key}: a personalize search varies only personalize.* and eval.* "
                                  "keys; search it with tune.kind=federation")
        if RATIO_KEY not in space and len(cfg.personalize.interp_ratios) != 1:
            raise ConfigError("key 'personalize.interp_ratios': each trial scores one ratio; give one value or "
                              "search it in tune.space")
    p = cfg.partition
    if p.val_examples < 1 or p.global_val_examples < 1:
        raise ConfigError("key 'partition.val_examples': a search selects on validation data; set "
                          "partition.val_examples and partition.global_val_examples above 0")


def prepare_base_run(cfg: ExperimentConfig, out: Path) -> tuple[Path, ExperimentConfig, torch.Tensor]:
    """The finished run every personalize trial starts from, loaded once (directory, config,
    global prompt): ``tune.base_run``, or one trained now into ``OUT/base`` (skipped when a
    finished one is already there, e.g. on resume; one cut off mid-run continues from its checkpoint)."""
    if cfg.tune.base_run:
        base = Path(cfg.tune.base_run).resolve()
        return (base, *load_finished_run(base, []))
    base = out / "base"
    try:
        return (base, *load_finished_run(base, []))
    except (FileNotFoundError, ConfigError):
        run_experiment(replace_keys(_shared(cfg), {"output_dir": str(base), "personalize.enabled": False,
                                                   "logging.wandb.enabled": False}),
                       resume=(base / CHECKPOINT).is_file())
    return (base, *load_finished_run(base, []))


def _trainable(cfg: ExperimentConfig, out: Path, base_run: tuple[Path, ExperimentConfig, torch.Tensor] | None):
    """The function each trial runs; it reports through ``tune.report`` under fixed names. Its
    config is built from typed objects (``replace_keys``): the search's config for a federation
    trial; for a personalize trial the base run's (``base_run``: its directory, config and global
    prompt, loaded once) with the search's personalize/eval/runtime/ray/logging sections."""
    search_name = cfg.name
    if base_run is not None:
        base_dir, run_cfg, global_prompt = base_run
        inherited = replace(run_cfg, personalize=cfg.personalize, eval=cfg.eval, runtime=cfg.runtime, ray=cfg.ray,
                            logging=cfg.logging)

    def trial(config: dict[str, Any]) -> None:
        from ray import tune

        quiet_worker_exit()  # Tune stops it with SIGTERM on Ctrl-C: no traceback on the user's terminal

        trial_id = tune.get_context().get_trial_id()
        values = trial_values(cfg, trial_params(config))
        if cfg.logging.wandb.enabled and cfg.logging.wandb.group is None:
            values["logging.wandb.group"] = search_name
        if base_run is None:  # federation: a whole run per trial
            trial_cfg = replace_keys(_shared(cfg), {**values, "output_dir": str(out / "trials" / trial_id),
                                                    "name": f"{search_name}-{trial_id}"})
            try:
                _federation_trial(trial_cfg)
            finally:
                _end_wandb(cfg)
            return
        reference: dict[str, float] = {}

        def report(epoch: int, rows: list[dict[str, Any]]) -> None:
            if epoch == 0:  # every ratio is still the global prompt: the un-personalized reference
                reference.update({f"reference/{k}": v for k, v in objectives_of(rows[0]).items()})
            structured = {f"personalize/{k}": v for k, v in rows[0].items() if "/" in k}
            tune.report({"epoch": epoch, **structured, **objectives_of(rows[0]), **reference})

        name = f"{search_name}-{trial_id}"
        try:
            personalize_run(base_dir, replace_keys(inherited, {**values, "personalize.name": name}),
                            global_prompt, name, loggers=[], prompt_cache=out / "local_prompts", on_epoch=report,
                            wandb_id=trial_id,  # a trial restarted on --resume continues its W&B run
                            out=out / "trials" / trial_id)  # the search's own directory, not the run it reads
        finally:
            _end_wandb(cfg)

    return trial


def _federation_trial(cfg: ExperimentConfig) -> None:
    """One federated run, reporting each evaluated round. A trial that Tune restarts after an
    interruption (``--resume``) finds its checkpoint in its directory and continues from it, so its
    rounds are the uninterrupted run's; when nothing is left to train, its last evaluated round is
    reported again so that Tune's last result for the trial is the finished run's."""
    out = Path(cfg.output_dir)
    reporter = _RoundReporter(cfg)
    run_experiment(cfg, loggers=[reporter], resume=(out / CHECKPOINT).is_file())
    if not reporter.reported:
        events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        key = metric_key("global_val", "rouge_l", phase=EVAL)
        reporter.log([e for e in events if e.get("event") == "round" and key in e][-1])


def _end_wandb(cfg: ExperimentConfig) -> None:
    """Stop this trial process's W&B service now: Ray ends trial processes without running
    W&B's exit hook cleanly, which would print a broken-connection traceback per trial."""
    if cfg.logging.wandb.enabled:
        import wandb

        wandb.teardown()


class _RoundReporter:
    """Reports each evaluated round (and a personalization's last row) of a federation trial."""

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        self.reported = 0

    def log(self, event: dict[str, Any]) -> None:
        from ray import tune

        if event.get("event") == "round" and metric_key("global_val", "rouge_l", phase=EVAL) in event:
            scores = {k: v for k, v in event.items() if k.startswith((f"{EVAL}/", f"{DITTO}/"))}
            tune.report({"round": event["round"], **scores, **objectives_of(_round_row(event))})
            self.reported += 1
        elif (event.get("event") == "personalize" and event["epoch"] == self.cfg.personalize.local_epochs
              and event["interp_ratio"] == self.cfg.personalize.interp_ratios[0]):
            row = {k.removeprefix("personalize/"): v for k, v in event.items()}
            tune.report({"round": self.cfg.algorithm.rounds, "epoch": event["epoch"], **objectives_of(row)})
            self.reported += 1

    def close(self) -> None:
        pass


def _round_row(event: dict[str, Any]) -> dict[str, float]:
    """A round event in the curve rows' terms: what the trial's algorithm deploys, per split. The
    global prompt's scores (a client mean on the clients' own splits, one score on the global
    sets); for Ditto each client's own prompt, as a client mean on its own splits and on the
    global sets, so a search compares Ditto's personal prompts with the others' global one."""
    if metric_key("local_val", "rouge_l", "mean", DITTO) in event:
        return {metric_key(split, "rouge_l", "mean"): event.get(metric_key(split, "rouge_l", "mean", DITTO), math.nan)
                for split in SPLITS}

    def stat(split: str) -> str | None:
        return None if split in GLOBAL_SPLITS else "mean"

    return {metric_key(split, "rouge_l", "mean"): event.get(metric_key(split, "rouge_l", stat(split), EVAL), math.nan)
            for split in SPLITS}


GRID = "grid"  # the one Tune key holding every grid point, in rayfed's order


def param_space(space: dict[str, SpaceParam]) -> dict[str, Any]:
    """Tune's param space. Grid keys become one ``grid_search`` over their product in the order of
    ``space`` (the first key varies slowest; Tune itself would order keys alphabetically), so
    consecutive trials differ in how they train and concurrent trials do not wait on each other."""
    from ray import tune

    grid_keys = [k for k, p in space.items() if p.type == "grid"]
    out: dict[str, Any] = {k: _domain(p) for k, p in space.items() if p.type != "grid"}
    if grid_keys:
        points = itertools.product(*(space[k].values or [] for k in grid_keys))
        out[GRID] = tune.grid_search([dict(zip(grid_keys, point)) for point in points])
    return out


def trial_params(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's searched keys and values from its Tune config."""
    return {**{k: v for k, v in config.items() if k != GRID}, **config.get(GRID, {})}


def _domain(p: SpaceParam):
    from ray import tune

    if p.type == "grid":
        return tune.grid_search(list(p.values or []))
    if p.type == "choice":
        return tune.choice(list(p.values or []))
    if p.type == "uniform":
        return tune.uniform(p.low, p.high)
    return tune.loguniform(p.low, p.high)


def _tune_config(cfg: ExperimentConfig):
    from ray import tune

    t = cfg.tune
    scheduler = None
    if t.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        # Progress is the trial's own round or epoch, not Tune's report count: a trial restarted
        # on --resume continues at its checkpoint's round, and its rungs stay where they were.
        scheduler = ASHAScheduler(time_attr="round" if t.kind == "federation" else "epoch", metric=LOCAL, mode="max",
                                  grace_period=t.grace_period,
                                  max_t=max(cfg.personalize.local_epochs, cfg.algorithm.rounds) + 1)
    if t.searcher.startswith("optuna"):
        from ray.tune.search.optuna import OptunaSearch

        multi = t.searcher == "optuna_multi"
        search = OptunaSearch(metric=[LOCAL, GLOBAL] if multi else LOCAL, mode=["max", "max"] if multi else "max",
                              seed=cfg.seed)
        return tune.TuneConfig(search_alg=search, scheduler=scheduler, num_samples=t.num_samples,
                               max_concurrent_trials=t.max_concurrent_trials)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # The basic generator limits concurrency itself (Tune ignores max_concurrent_trials for it).
    search = BasicVariantGenerator(max_concurrent=t.max_concurrent_trials, random_state=cfg.seed)
    return tune.TuneConfig(search_alg=search, scheduler=scheduler, num_samples=t.num_samples)


def _shared(cfg: ExperimentConfig) -> ExperimentConfig:
    """What every trial starts from: the search's config without its ``tune:`` section."""
    return replace(cfg, tune=TuneConfig())


def trial_values(cfg: ExperimentConfig, params: dict[str, Any]) -> dict[str, Any]:
    """A trial's sampled values by key; a scalar for a list key (``personalize.interp_ratios``) is a
    one-element list: each trial then scores that one ratio. The one place that wraps it."""
    schema = OmegaConf.structured(cfg)
    return {key: [value] if OmegaConf.is_list(OmegaConf.select(schema, key, default=None))
            and not isinstance(value, list | tuple) else value for key, value in params.items()}


def write_results(cfg: ExperimentConfig, out: Path, params: list[str],
                  trials: list[tuple[dict[str, Any], dict[str, Any], Any]]) -> dict[str, Any]:
    """results.csv (one row per trial), pareto.csv, search.json and pareto.png from the trials'
    last reports; the Pareto set and the choice read validation scores only."""
    rows = []
    for metrics, config, error in trials:
        row = {"trial_id": metrics.get("trial_id", ""), "status": trial_status(cfg, metrics, config, error)}
        row.update({p: trial_params(config).get(p) for p in params})
        row["epoch"] = metrics.get("epoch", metrics.get("round"))
        row.update({k: metrics.get(k, math.nan) for k in OBJECTIVES})
        row.update({flat_name(split, stat, metric): metrics.get(f"personalize/{metric_key(split, metric, stat)}",
                                                                 math.nan) for split, stat, metric in CHANGE_COLUMNS})
        rows.append(row)
    rows.sort(key=lambda r: r["trial_id"])
    scored = [r for r in rows if r["status"] == "done" and not (math.isnan(r[LOCAL]) or math.isnan(r[GLOBAL]))]
    for row, on_front in zip(scored, pareto_mask([(r[LOCAL], r[GLOBAL]) for r in scored])):
        row["pareto"] = int(on_front)
    bounds = [tuple(r[flat_name(split, stat)] for split in ("local_val", "global_val") for stat in ("change_low",
                                                                                                   "change_high"))
              for r in scored]
    if bounds and all(math.isfinite(v) for b in bounds for v in b):  # a personalize search: intervals per trial
        for row, kept in zip(scored, reliable_pareto_mask(bounds), strict=True):
            row["pareto_reliable"] = int(kept)
    reference = _search_reference(trials)
    selected, rule = _choose(scored, reference, cfg.personalize.global_tolerance, cfg.personalize.metric)
    for row in rows:
        row.setdefault("pareto", 0)
        row["selected"] = int(selected is not None and row["trial_id"] == selected.get("trial_id"))
    changes = [flat_name(*column) for column in CHANGE_COLUMNS] if cfg.tune.kind == "personalize" else []
    columns = ["trial_id", "status", *params, "epoch", *OBJECTIVES, *changes, "pareto",
               *(["pareto_reliable"] if changes else []), "selected"]
    for name, subset in (("results.csv", rows), ("pareto.csv", [r for r in rows if r["pareto"]])):
        with open(out / name, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(subset)
    if selected is not None:
        selected = {k: v for k, v in selected.items() if k in (*columns, "rule", "kept_global_prompt", "reason")}
    failed = [r["trial_id"] for r in rows if r["status"] == "error"]
    summary = {"name": cfg.name, "kind": cfg.tune.kind, "params": params, "reference": reference, "rule": rule,
               "selected": selected, "complete": not failed, "failed": failed, "rows": rows}
    (out / "search.json").write_text(json.dumps(summary, indent=2, default=str))
    _publish(cfg, out, summary, columns)
    return summary


def trial_status(cfg: ExperimentConfig, metrics: dict[str, Any], config: dict[str, Any], error: Any) -> str:
    """``done`` when the trial's last report is its last round (federation; and its personalization's
    last epoch when it personalizes) or its last epoch (personalize); ``error`` when it failed;
    ``stopped`` when it ended early without an error (a scheduler stopped it). Only ``done`` trials
    are ranked, put on the Pareto set or selected: a partial score is not a trial's result."""
    if error:
        return "error"
    trial = replace_keys(_shared(cfg), trial_values(cfg, trial_params(config)))
    last_epoch = trial.personalize.local_epochs
    if cfg.tune.kind == "personalize":
        finished = metrics.get("epoch") == last_epoch
    else:
        finished = metrics.get("round") == trial.algorithm.rounds and (
            not trial.personalize.enabled or metrics.get("epoch") == last_epoch)
    return "done" if finished else "stopped"


def flat_name(split: str, stat: str, metric: str = "rouge_l") -> str:
    """A search's flat column for a statistic of ``metric``: ``local_val_rouge_l`` for the client
    mean, ``local_val_rouge_l_change_low`` for the lower end of its paired change."""
    return objective(split, metric) if stat == "mean" else f"{objective(split, metric)}_{stat}"


CHANGES = [(split, stat) for split in ("local_val", "global_val") for stat in ("change", "change_low", "change_high")]
# A personalize search's columns beside the objectives (ROUGE-L's means): ROUGE-L's paired changes,
# and the loss's means and changes, which the choice reads with personalize.metric=loss.
CHANGE_COLUMNS = ([(split, stat, "rouge_l") for split, stat in CHANGES]
                  + [(split, stat, "loss") for split in ("local_val", "global_val")
                     for stat in ("mean", "change", "change_low", "change_high")])


def _choose(scored: list[dict[str, Any]], reference: dict[str, float] | None,
            tolerance: float, metric: str = "rouge_l") -> tuple[dict[str, Any] | None, str]:
    """The selected trial and the rule. A personalize search (every trial paired with the shared
    un-personalized prompt): the reliable rule on the trials' 95% intervals of ``metric``
    (``personalize.metric``), which keeps the global prompt when no trial's gain is beyond the
    noise. A federation search has no shared reference: the best local ROUGE-L among the trials
    within ``tolerance`` of the best global one (means)."""
    if not scored:
        return None, rule_text(tolerance, LOCAL, GLOBAL)
    if reference is None:
        rule = f"max {LOCAL} subject to {GLOBAL} >= best trial's - {tolerance:g}"
        return select_best(scored, {GLOBAL: max(r[GLOBAL] for r in scored)}, tolerance, LOCAL, GLOBAL), rule
    def name(split: str, stat: str) -> str:
        return flat_name(split, stat, metric)

    if all(math.isfinite(r[name(split, stat)]) for r in scored for split, stat in CHANGES):
        choice = select_reliable(scored, tolerance, name, metric)
        return choice, reliable_rule_text(tolerance, name, metric)
    return select_best(scored, reference, tolerance, LOCAL, GLOBAL), rule_text(tolerance, LOCAL, GLOBAL)


def _search_reference(trials: list[tuple[dict[str, Any], dict[str, Any], Any]]) -> dict[str, float] | None:
    for metrics, _, _ in trials:
        ref = {k.removeprefix("reference/"): v for k, v in metrics.items() if k.startswith("reference/")}
        if ref:
            return ref
    return None


def _publish(cfg: ExperimentConfig, out: Path, summary: dict[str, Any], columns: list[str]) -> None:
    """Draw pareto.png; with W&B on, log it and the results table once for the whole search."""
    from rayfed.outputs.plots import plot_search

    pngs = plot_search(out)
    if not cfg.logging.wandb.enabled:
        return
    from rayfed.outputs.loggers import build_loggers

    for logger in build_loggers(cfg, out, [], job_type="search"):
        logger.log({"event": "table", "key": "tune/results", "columns": columns,
                    "rows": [[row.get(c) for c in columns] for row in summary["rows"]]})
        for png in pngs:
            logger.log({"event": "image", "key": f"tune/{png.stem}", "path": str(png)})
        logger.log({"event": "summary", **{f"tune/selected/{k}": v for k, v in (summary["selected"] or {}).items()}})
        logger.close()
