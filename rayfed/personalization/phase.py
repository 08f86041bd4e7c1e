"""The personalization phase: a finished run's clients each fine-tune its global prompt, and every
evaluated epoch and interpolation ratio is scored (``rayfed personalize RUN_DIR``, Tune trials,
the study, and ``personalize.enabled`` at the end of ``rayfed run``).

``run_personalization`` takes overrides typed by a person; ``personalize_run`` a run already
loaded with typed settings; both end in ``personalize_phase``, which writes
``personalization.jsonl``, ``summary.json`` and the figures. The curves themselves are
``rayfed.personalization.curves``'; the shared local prompts ``rayfed.personalization.cache``'.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from rayfed.config import ConfigError, ExperimentConfig, check_overridable, load_config, to_yaml
from rayfed.core.interpolation import interpolate
from rayfed.core.selection import select_reliable
from rayfed.data.sources import federated_data
from rayfed.outputs.adapter import SITE_ADAPTERS, save_adapter
from rayfed.outputs.checkpoint import load_prompt
from rayfed.outputs.lock import writing
from rayfed.outputs.loggers import MetricLogger, build_loggers
from rayfed.outputs.plots import draw_and_log
from rayfed.outputs.prompt_files import write_prompt_map
from rayfed.outputs.scores import EXAMPLE_SCORES, load_example_scores, rows_of, save_example_scores
from rayfed.personalization.cache import RUN_LOCAL_PROMPTS, PromptCache
from rayfed.personalization.curves import EpochCallback, PersonalizationResult, personalize, score_reference
from rayfed.personalization.per_client import per_client_selection
from rayfed.personalization.settings import PersonalizeSettings
from rayfed.runtime.progress import phase
from rayfed.runtime.session import open_driver
from rayfed.settings import EvalSettings, ModelSettings

# What `rayfed personalize` may change in a finished run's config: how to personalize, evaluate,
# run and log, never what was trained (model, data, partition, algorithm, seed).
PERSONALIZE_OVERRIDABLE = ("personalize.", "eval.", "runtime.", "ray.", "logging.", "rollout.")
# What may differ between personalizations that share one run's workers (personalization_driver):
# how to personalize, score and log; the workers themselves are built from the rest.
SHARED_DRIVER_OVERRIDABLE = ("personalize.", "eval.", "logging.")


def run_personalization(run_dir: str | Path, overrides: list[str] | None = None,
                        loggers: list[MetricLogger] | None = None, *, prompt_cache: Path | None = None,
                        on_epoch: EpochCallback | None = None, driver: Any = None) -> dict[str, Any]:
    """Personalize a finished run's global prompt (nothing is retrained) into
    ``run_dir/personalize/<name>/`` and return that directory's summary.

    Args:
        run_dir: A directory written by ``run_experiment`` (config.yaml, global_prompt.safetensors).
        overrides: ``key=value`` strings; only ``personalize.*``, ``eval.*``, ``runtime.*``,
            ``ray.*`` and ``logging.*`` keys may change.
        loggers: Extra metric loggers (default: the console).
        prompt_cache: A directory where trained local prompts are kept by their training settings,
            so runs that differ only in how they score them (interpolation ratios) share them
            (default: ``run_dir/.local_prompts``, which ``rayfed rollout`` reads too).
        on_epoch: Called with each evaluated epoch's curve rows (Tune reports through it).
        driver: The run's workers from :func:`personalization_driver`, shared by several
            personalizations; then only ``personalize.*``, ``eval.*`` and ``logging.*`` keys may change.
            None: start them for this call and stop them after it.
    """
    if driver is not None:
        check_overridable(overrides or [], SHARED_DRIVER_OVERRIDABLE, "personalizing on a shared driver")
    cfg, global_prompt = load_finished_run(run_dir, overrides or [])
    if prompt_cache is None:
        prompt_cache = Path(run_dir) / RUN_LOCAL_PROMPTS
    return personalize_run(run_dir, cfg, global_prompt, cfg.personalize.name or name_from(overrides or []), loggers,
                           prompt_cache=prompt_cache, on_epoch=on_epoch, driver=driver)


def personalize_run(run_dir: str | Path, cfg: ExperimentConfig, global_prompt: torch.Tensor, name: str,
                    loggers: list[MetricLogger] | None = None, *, prompt_cache: Path | None = None,
                    on_epoch: EpochCallback | None = None, driver: Any = None,
                    wandb_id: str | None = None, out: Path | None = None) -> dict[str, Any]:
    """Personalize a finished run already loaded (``load_finished_run``): ``cfg`` is its config
    with this personalization's settings (a Tune trial sets them with ``replace_keys``), the
    results go to ``out`` (default ``run_dir/personalize/<name>/``; a Tune trial's go to its
    search's ``trials/<trial id>/``, never into the run it reads); ``wandb_id`` names its W&B run
    (a Tune trial's id). The other arguments are :func:`run_personalization`'s."""
    # Without a shared driver, this call's own workers (the same seed and config: the run's shards).
    own = open_driver(cfg, federated_data(cfg)) if driver is None else nullcontext(driver)
    with own as driver:
        out = Path(run_dir) / "personalize" / name if out is None else Path(out)
        logs = build_loggers(cfg, out, loggers, job_type="personalize", run_id=wandb_id)
        try:
            return personalize_phase(cfg, driver, global_prompt, out, logs, prompt_cache=prompt_cache,
                                     on_epoch=on_epoch)
        finally:
            for logger in logs:
                logger.close()


@contextmanager
def personalization_driver(run_dir: str | Path, overrides: list[str] | None = None) -> Iterator[Any]:
    """A finished run's workers and data, for one or several personalizations: starting the
    workers (model loads, shards tokenized) took 16 s for a SmolLM2 run on 2 busy cores, and the
    workers depend only on the run's config and seed, never on how it is personalized or scored."""
    with open_finished_run(run_dir, overrides) as (_, _, driver):
        yield driver


@contextmanager
def open_finished_run(run_dir: str | Path, overrides: list[str] | None = None,
                      ) -> Iterator[tuple[ExperimentConfig, torch.Tensor, Any]]:
    """``(config, global prompt, driver)`` of a finished run, its workers started once for the
    personalizations that follow (:func:`personalize_run` with ``driver=``)."""
    cfg, global_prompt = load_finished_run(run_dir, overrides or [])
    with open_driver(cfg, federated_data(cfg)) as driver:  # the same seed and config: the run's shards
        yield cfg, global_prompt, driver


def personalize_phase(cfg: ExperimentConfig, driver: Any, global_prompt: torch.Tensor, out: Path,
                      loggers: list[MetricLogger], *, prompt_cache: Path | None = None,
                      on_epoch: EpochCallback | None = None) -> dict[str, Any]:
    """Personalize, log each epoch's curve rows, and write personalization.jsonl and summary.json
    (``out`` locked: one process at a time writes a personalization)."""
    with writing(out, "personalize.name"):
        return _personalize_phase(cfg, driver, global_prompt, out, loggers, prompt_cache=prompt_cache,
                                  on_epoch=on_epoch)


# The personalize keys that only choose among the scored settings: the scores do not depend on them.
SELECTION_KEYS = ("global_tolerance", "selection", "metric")


def check_same_settings(out: Path, cfg: ExperimentConfig, ignore: tuple[str, ...] = ()) -> None:
    """Refuse to replace a personalization of this name made with other settings (the
    ``personalize.*`` and ``eval.*`` keys but ``ignore``): rerunning the same settings is fine,
    different ones need their own name.

    Raises:
        ConfigError: naming the keys that differ and the way out.
    """
    if not (out / "config.yaml").is_file():
        return
    old = load_config(out / "config.yaml")
    changed = [f"{section}.{key}: {value!r} -> {getattr(getattr(cfg, section), key)!r}"
               for section in ("personalize", "eval") for key, value in asdict(getattr(old, section)).items()
               if key != "name" and key not in ignore and value != asdict(getattr(cfg, section))[key]]
    if changed:
        raise ConfigError(f"key 'personalize.name': {out} holds a personalization with other settings "
                          f"({'; '.join(changed)}); give this one its own personalize.name=NAME, or remove {out} "
                          "to replace it")


def _personalize_phase(cfg: ExperimentConfig, driver: Any, global_prompt: torch.Tensor, out: Path,
                       loggers: list[MetricLogger], *, prompt_cache: Path | None,
                       on_epoch: EpochCallback | None) -> dict[str, Any]:
    started = time.perf_counter()
    check_same_settings(out, cfg)
    (out / "config.yaml").write_text(to_yaml(cfg))
    settings = PersonalizeSettings.from_config(cfg.personalize)
    evaluation = EvalSettings.from_config(cfg.eval)
    cache = PromptCache(prompt_cache, cfg.seed) if prompt_cache is not None else None

    progress = _Progress(loggers, settings, on_epoch)
    status = progress.status
    # Local prompts depend only on how they are trained, and the reference only on the global
    # prompt: with a cache, runs that differ in how they score (ratios) compute each once.
    def train():
        with phase("personalize: fine-tuning", cfg.partition.num_clients):
            return driver.personalize_train(global_prompt, settings)

    def score():
        with phase("personalize: scoring the global prompt", None):
            return score_reference(driver, global_prompt, list(range(cfg.partition.num_clients)),
                                   settings.global_eval_examples, evaluation, settings.validation)

    status(f"{cfg.partition.num_clients} clients fine-tune the global prompt for {settings.epochs} epoch(s)")
    trained, reused = cache.local_prompts(settings, train) if cache else (train(), False)
    twin = scored_twin(out, cfg)
    if twin is not None:  # the same prompts scored the same way: only the choice is new
        status(f"local prompts {'reused from the cache' if reused else 'trained'} in {progress.lap():.0f} s; "
               f"every score read from {twin}, which scored them with these settings")
        result = rescored(twin, settings, progress.epoch_done)
    else:
        status(f"local prompts {'reused from the cache' if reused else 'trained'} in "
               f"{progress.lap():.0f} s; scoring the global prompt")
        reference = cache.reference(settings, evaluation, score) if cache else None
        with phase("personalize: scoring", None):
            result = personalize(driver, global_prompt, settings, trained, evaluation, reference=reference,
                                 on_epoch=progress.epoch_done)
    with open(out / "personalization.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in result.records)
    save_example_scores(out / EXAMPLE_SCORES, result.examples)
    per_client = per_client_selection(result.examples, settings.global_tolerance, result.selected, settings.metric) \
        if settings.validation and result.selected is not None else None
    if result.selected is not None:
        choices = ({int(c): ch for c, ch in per_client["clients"].items()}
                   if per_client is not None and cfg.personalize.selection == "per_client"
                   else dict.fromkeys(trained, result.selected))
        save_site_adapters(out / SITE_ADAPTERS, cfg, global_prompt, trained, choices)
    shown = int((result.selected or {}).get("epoch", 0)) or settings.epochs  # the selected epoch, else the last
    write_prompt_map(out, driver, global_prompt, {cid: prompts[shown] for cid, (prompts, _) in trained.items()}, shown)
    summary = {"name": out.name, "settings": asdict(settings), "reference": result.reference,
               "curve": result.curve, "selected": result.selected, "local_prompts_reused": reused,
               **({"scores_from": twin.name} if twin is not None else {}),
               **({"per_client": per_client} if per_client is not None else {}),
               "machines": driver.machines(),  # where its workers computed (rayfed.runtime.machine)
               "seconds": time.perf_counter() - started}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    for logger in loggers:
        logger.log({"event": "summary", **{f"personalize/selected/{k}": v
                                           for k, v in (result.selected or {}).items()}})
    draw_and_log(out, loggers)
    return summary


SCORED = ("summary.json", "personalization.jsonl", EXAMPLE_SCORES)  # what a finished personalization holds


def scored_twin(out: Path, cfg: ExperimentConfig) -> Path | None:
    """Another finished personalization beside ``out`` (the same run's, or the same search's
    trials) that scored the same local prompts on the same examples and chose by another rule:
    every ``personalize.*`` and ``eval.*`` key equal but the name and at least one of the keys that
    only choose (:data:`SELECTION_KEYS`). Its scores are this one's, so ``personalize.metric=loss``
    or another tolerance on a finished personalization takes seconds, not a rescoring. (The same
    settings under a new name are scored again, as a check of the first.)"""
    if not out.parent.is_dir():
        return None
    for other in sorted(out.parent.iterdir()):
        if other == out or not all((other / name).is_file() for name in (*SCORED, "config.yaml")):
            continue
        try:
            check_same_settings(other, cfg, ignore=(*SELECTION_KEYS, "enabled"))
        except ConfigError:
            continue
        chose = load_config(other / "config.yaml").personalize
        if any(getattr(chose, key) != getattr(cfg.personalize, key) for key in SELECTION_KEYS):
            return other
    return None


def rescored(twin: Path, settings: PersonalizeSettings, on_epoch: EpochCallback) -> PersonalizationResult:
    """``twin``'s curve, records and per-example scores, chosen among by ``settings``' rule;
    ``on_epoch`` sees each evaluated epoch's rows as if they had just been scored (Tune reports)."""
    summary = json.loads((twin / "summary.json").read_text())
    result = PersonalizationResult(
        records=[json.loads(line) for line in (twin / "personalization.jsonl").read_text().splitlines() if line],
        examples=rows_of(load_example_scores(twin / EXAMPLE_SCORES)), curve=summary["curve"],
        reference=summary["reference"])
    for epoch in sorted({row["epoch"] for row in result.curve}):
        on_epoch(epoch, [row for row in result.curve if row["epoch"] == epoch])
    result.selected = select_reliable(result.curve, settings.global_tolerance, metric=settings.metric)
    return result


def save_site_adapters(directory: Path, cfg: ExperimentConfig, global_prompt: torch.Tensor,
                       trained: dict[int, tuple[dict[int, torch.Tensor], dict[int, float]]],
                       choices: dict[int, dict[str, Any]]) -> None:
    """Each client's prompt at its chosen setting (``choices[client]``: the federation-wide
    selection, or its own with ``personalize.selection: per_client``): its local prompt of the
    chosen epoch interpolated with the global one at the chosen ratio, the global prompt where
    the rule kept it, as a PEFT adapter in ``directory/client_<id>/``: what each site would deploy."""
    for cid, (prompts, _) in sorted(trained.items()):
        selected = choices[cid]
        epoch, ratio = int(selected.get("epoch", 0)), float(selected.get("interp_ratio", 0.0))
        prompt = global_prompt if epoch == 0 or ratio == 0 else interpolate(global_prompt, prompts[epoch], ratio)
        save_adapter(directory / f"client_{cid}", prompt, ModelSettings.from_config(cfg.model),
                     max_source_tokens=cfg.data.max_source_tokens, max_target_tokens=cfg.data.max_target_tokens,
                     source={"prompt": "personalized", "client_id": cid, "epoch": epoch, "interp_ratio": ratio,
                             "l2_strength": cfg.personalize.l2_strength,
                             "kept_global_prompt": bool(selected.get("kept_global_prompt", False))})


class _Progress:
    """Progress lines for a phase that takes minutes (console only), each evaluated epoch's curve
    rows to the loggers, and ``on_epoch`` (Tune reports there)."""

    def __init__(self, loggers: list[MetricLogger], settings: PersonalizeSettings, on_epoch: EpochCallback | None):
        self.loggers, self.settings, self.on_epoch = loggers, settings, on_epoch
        self.epochs = settings.eval_epochs()
        self.since = time.perf_counter()

    def status(self, message: str) -> None:
        for logger in self.loggers:
            logger.log({"event": "status", "message": f"personalize: {message}"})

    def lap(self) -> float:
        """Seconds since the last lap (or the start), and a new lap from now."""
        now = time.perf_counter()
        seconds, self.since = now - self.since, now
        return seconds

    def epoch_done(self, epoch: int, rows: list[dict[str, Any]]) -> None:
        seconds = time.perf_counter() - self.since  # since the reference started (epoch 0) or was done
        done, left = self.epochs.index(epoch), len(self.epochs) - 1 - self.epochs.index(epoch)
        if epoch == 0:
            self.status(f"the global prompt scored in {seconds:.0f} s; {left} evaluated epoch(s) to score")
            self.lap()
        else:
            self.status(f"epoch {epoch}/{self.settings.epochs} scored; about {seconds / done * left / 60:.1f} min left")
        for row in rows:
            for logger in self.loggers:
                logger.log({"event": "personalize", "epoch": row["epoch"], "interp_ratio": row["interp_ratio"],
                            **{f"personalize/{k}": v for k, v in row.items() if "/" in k}})
        if self.on_epoch is not None:
            self.on_epoch(epoch, rows)


def load_finished_run(run_dir: str | Path, overrides: list[str]) -> tuple[ExperimentConfig, torch.Tensor]:
    """A finished run's config (with allowed overrides) and final global prompt.

    Raises:
        FileNotFoundError: the directory lacks config.yaml or global_prompt.safetensors.
        ConfigError: an override changes what was trained, or the run did not finish.
    """
    run_dir = Path(run_dir)
    for name in ("config.yaml", "global_prompt.safetensors"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir} is not a finished rayfed run: {name} is missing "
                                    f"(run `rayfed run CONFIG output_dir={run_dir}` first)")
    check_overridable(overrides, PERSONALIZE_OVERRIDABLE, "personalizing a finished run")
    cfg = load_config(run_dir / "config.yaml", overrides)
    prompt, meta = load_prompt(run_dir / "global_prompt.safetensors")
    if meta.get("round") != str(cfg.algorithm.rounds):
        raise ConfigError(f"key 'algorithm.rounds': the run in {run_dir} stopped at round {meta.get('round')} "
                          f"of {cfg.algorithm.rounds}; personalize a finished run")
    return cfg, prompt


def name_from(overrides: list[str], section: str = "personalize") -> str:
    """A directory name from the ``section``'s overrides, e.g. ``l2_strength=0.1,optimizer.lr=0.01``."""
    parts = [o.removeprefix(f"{section}.") for o in overrides if o.startswith(f"{section}.")]
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", ",".join(parts))[:120] or "default"
