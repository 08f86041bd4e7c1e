"""The orchestrator: the two phases a user runs, each read top to bottom.

``run_experiment``: build data and the driver, run rounds, evaluate, write results (and
personalize at the end if ``personalize.enabled``). ``run_personalization``: start from a
finished run's global prompt and config, personalize every client, write the curves. Both go
through ``personalize_phase``; everything they call is a small piece with its own file.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from rayfed.checkpoint import (
    CHECKPOINT,
    PromptCache,
    load_prompt,
    load_run_state,
    save_prompt,
    save_run_state,
    truncate_events,
)
from rayfed.config import ConfigError, ExperimentConfig, load_config, to_yaml
from rayfed.data.sources import federated_data
from rayfed.errors import UserError
from rayfed.loggers import MetricLogger, build_loggers, log_round
from rayfed.names import EVAL, METRICS, metric_key
from rayfed.personalization import EpochCallback, PersonalizeSettings, personalize, score_reference
from rayfed.runtime.session import open_driver
from rayfed.settings import EvalSettings
from rayfed.types import RoundResult

# What `rayfed personalize` may change in a finished run's config: how to personalize, evaluate,
# run and log, never what was trained (model, data, partition, algorithm, seed).
PERSONALIZE_OVERRIDABLE = ("personalize.", "eval.", "runtime.", "ray.", "logging.")
# What may differ between personalizations that share one run's workers (personalization_driver):
# how to personalize, score and log; the workers themselves are built from the rest.
SHARED_DRIVER_OVERRIDABLE = ("personalize.", "eval.", "logging.")
# What `rayfed resume` may change: where and how the rest of the run runs, not what it trains.
RESUME_OVERRIDABLE = ("runtime.", "ray.", "logging.", "personalize.")


WANDB_ID = "wandb-run-id.txt"  # with W&B on: the run's id, so `rayfed resume` continues the same W&B run


class RunExistsError(UserError):
    """A run would overwrite a directory that already holds one."""


def run_experiment(cfg: ExperimentConfig, loggers: list[MetricLogger] | None = None, *, resume: bool = False,
                   overwrite: bool = False) -> dict[str, Any]:
    """Run one federated prompt-tuning experiment and return its summary (also in summary.json).

    Args:
        cfg: The experiment config.
        loggers: Extra metric loggers (default: the console).
        resume: Continue from ``output_dir``'s checkpoint (``rayfed resume``): the rounds after
            it run exactly as they would have without the interruption.
        overwrite: Start over in an ``output_dir`` that already holds a run (otherwise refused).

    Raises:
        RunExistsError: ``output_dir`` holds a run and neither ``resume`` nor ``overwrite`` is set.
    """
    started = time.perf_counter()
    out = Path(cfg.output_dir)
    done, state, record = _open_output(out, resume=resume, overwrite=overwrite)

    # --- Data: load and partition once, here; shards travel to the workers once. Bad data or a
    # bad model fails here and in open_driver, before anything in output_dir is touched.
    data = federated_data(cfg)

    with open_driver(cfg, data) as driver:
        if resume:
            truncate_events(out / "metrics.jsonl", done)  # rounds after the checkpoint are logged again
        else:
            for name in (CHECKPOINT, "metrics.jsonl", "summary.json", WANDB_ID):  # --overwrite: start clean
                (out / name).unlink(missing_ok=True)
        (out / "config.yaml").write_text(to_yaml(cfg))
        loggers = build_loggers(cfg, out, loggers, metrics_file=out / "metrics.jsonl", run_id_file=out / WANDB_ID)
        try:
            # --- Rounds: evaluate the untrained prompt, then train, evaluating every eval_every rounds.
            if resume:
                driver.restore(state)
                initial, final = _result(record["initial"]), _result(record["final"])
            else:
                initial = final = driver.evaluate(0)
                log_round(loggers, initial)
            final = _train_rounds(cfg, driver, loggers, out, first=done + 1, initial=initial, final=final)

            # --- Personalization (optional): the same phase `rayfed personalize` runs on a finished run.
            personal = None
            if cfg.personalize.enabled:
                personal = personalize_phase(cfg, driver, driver.global_prompt(),
                                             out / "personalize" / (cfg.personalize.name or "default"), loggers)
            _draw(out, loggers, recurse=False)
        finally:
            for logger in loggers:
                logger.close()

    # --- Results.
    summary = _run_summary(cfg, initial, final, time.perf_counter() - started)
    if personal is not None:
        summary["personalization"] = personal
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    return summary


def _open_output(out: Path, *, resume: bool, overwrite: bool) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]]:
    """Check that ``out`` can be written and holds no run (unless resuming or overwriting); return
    the checkpoint's ``(round, driver state, record)`` when resuming, else a fresh start."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"key 'output_dir': cannot create {out} ({err.strerror or err})") from None
    if not os.access(out, os.W_OK):
        raise UserError(f"key 'output_dir': {out} is not writable")
    checkpoint = out / CHECKPOINT
    if resume:
        return load_run_state(checkpoint)
    if not overwrite and ((out / "summary.json").exists() or checkpoint.exists()):
        raise RunExistsError(f"{out} already holds a run: continue it with `rayfed resume {out}`, choose "
                             f"another output_dir, or start over with --overwrite")
    return 0, {}, {}


def _train_rounds(cfg: ExperimentConfig, driver: Any, loggers: list[MetricLogger], out: Path, *, first: int,
                  initial: RoundResult, final: RoundResult) -> RoundResult:
    """Rounds ``first`` to the last: train, evaluate every ``eval.eval_every`` rounds (and the last),
    log, save the global prompt, checkpoint. Returns the last evaluation."""
    for round_idx in range(first, cfg.algorithm.rounds + 1):
        result = driver.run_round(round_idx)
        evaluation = None
        if round_idx % cfg.eval.eval_every == 0 or round_idx == cfg.algorithm.rounds:
            evaluation = final = driver.evaluate(round_idx)
        log_round(loggers, result, evaluation)
        save_prompt(out / "global_prompt.safetensors", driver.global_prompt(),
                    {"round": str(round_idx), "config": cfg.name})
        if round_idx % cfg.checkpoint.every == 0 or round_idx == cfg.algorithm.rounds:
            save_run_state(out / CHECKPOINT, round_idx, driver.state(),
                           {"initial": asdict(initial), "final": asdict(final)})
    return final


def _run_summary(cfg: ExperimentConfig, initial: RoundResult, final: RoundResult, seconds: float) -> dict[str, Any]:
    """summary.json of a run: the global test scores before and after, the final validation and
    local scores, each client's final scores."""
    return {
        "name": cfg.name,
        "rounds": cfg.algorithm.rounds,
        "initial": _scores(initial, "global_test"),
        "final": _scores(final, "global_test"),
        "final_val": _scores(final, "global_val"),
        "final_local": {k: v for k, v in final.metrics.items() if k.startswith("eval/local_")},
        "clients": {str(cid): m for cid, m in final.client_metrics.items()},
        "seconds": seconds,
    }


def resume_experiment(run_dir: str | Path, overrides: list[str] | None = None,
                      loggers: list[MetricLogger] | None = None) -> dict[str, Any]:
    """Continue an interrupted run from its last checkpoint (``rayfed resume RUN_DIR``) with the
    config it was started with; only ``runtime.*``, ``ray.*``, ``logging.*`` and
    ``personalize.*`` may change (where and how it runs, not what it trains)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a rayfed run: config.yaml is missing")
    _check_overridable(overrides or [], RESUME_OVERRIDABLE, "resuming a run")
    cfg = load_config(run_dir / "config.yaml", [*(overrides or []), f"output_dir={run_dir}"])
    return run_experiment(cfg, loggers, resume=True)


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
            so runs that differ only in how they score them (interpolation ratios) share them.
        on_epoch: Called with each evaluated epoch's curve rows (Tune reports through it).
        driver: The run's workers from :func:`personalization_driver`, shared by several
            personalizations; then only ``personalize.*`` and ``logging.*`` keys may change.
            None: start them for this call and stop them after it.
    """
    if driver is not None:
        _check_overridable(overrides or [], SHARED_DRIVER_OVERRIDABLE, "personalizing on a shared driver")
    cfg, global_prompt = load_finished_run(run_dir, overrides or [])
    return personalize_run(run_dir, cfg, global_prompt, cfg.personalize.name or _name_from(overrides or []), loggers,
                           prompt_cache=prompt_cache, on_epoch=on_epoch, driver=driver)


def personalize_run(run_dir: str | Path, cfg: ExperimentConfig, global_prompt: torch.Tensor, name: str,
                    loggers: list[MetricLogger] | None = None, *, prompt_cache: Path | None = None,
                    on_epoch: EpochCallback | None = None, driver: Any = None) -> dict[str, Any]:
    """Personalize a finished run already loaded (``load_finished_run``): ``cfg`` is its config
    with this personalization's settings (a Tune trial sets them with ``replace_keys``), the
    results go to ``run_dir/personalize/<name>/``. The other arguments are
    :func:`run_personalization`'s."""
    # Without a shared driver, this call's own workers (the same seed and config: the run's shards).
    own = open_driver(cfg, federated_data(cfg)) if driver is None else nullcontext(driver)
    with own as driver:
        out = Path(run_dir) / "personalize" / name
        logs = build_loggers(cfg, out, loggers, job_type="personalize")
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
    """Personalize, log each epoch's curve rows, and write personalization.jsonl and summary.json."""
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    settings = PersonalizeSettings.from_config(cfg.personalize)
    evaluation = EvalSettings.from_config(cfg.eval)
    cache = PromptCache(prompt_cache, cfg.seed) if prompt_cache is not None else None

    def status(message: str) -> None:  # progress for a phase that takes minutes (console only)
        for logger in loggers:
            logger.log({"event": "status", "message": f"personalize: {message}"})

    epochs = settings.eval_epochs()
    clock = {"since": time.perf_counter()}

    def epoch_done(epoch: int, rows: list[dict[str, Any]]) -> None:
        seconds = time.perf_counter() - clock["since"]
        done, left = epochs.index(epoch), len(epochs) - 1 - epochs.index(epoch)
        if epoch == 0:
            status(f"the global prompt scored in {seconds:.0f} s; {left} evaluated epoch(s) to score")
        else:
            status(f"epoch {epoch}/{settings.epochs} scored; about {seconds / done * left / 60:.1f} min left")
        for row in rows:
            for logger in loggers:
                logger.log({"event": "personalize", "epoch": row["epoch"], "interp_ratio": row["interp_ratio"],
                            **{f"personalize/{k}": v for k, v in row.items() if "/" in k}})
        if epoch == 0:
            clock["since"] = time.perf_counter()
        if on_epoch is not None:
            on_epoch(epoch, rows)

    # Local prompts depend only on how they are trained, and the reference only on the global
    # prompt: with a cache, runs that differ in how they score (ratios) compute each once.
    def train():
        return driver.personalize_train(global_prompt, settings)

    def score():
        return score_reference(driver, global_prompt, list(range(cfg.partition.num_clients)),
                               settings.global_eval_examples, evaluation, settings.validation)

    status(f"{cfg.partition.num_clients} clients fine-tune the global prompt for {settings.epochs} epoch(s)")
    trained, reused = cache.local_prompts(settings, train) if cache else (train(), False)
    status(f"local prompts {'reused from the cache' if reused else 'trained'} in "
           f"{time.perf_counter() - clock['since']:.0f} s; scoring the global prompt")
    clock["since"] = time.perf_counter()
    reference = cache.reference(settings, evaluation, score) if cache else None
    result = personalize(driver, global_prompt, settings, trained, evaluation, reference=reference,
                         on_epoch=epoch_done)
    with open(out / "personalization.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in result.records)
    summary = {"name": out.name, "settings": asdict(settings), "reference": result.reference,
               "curve": result.curve, "selected": result.selected, "local_prompts_reused": reused,
               "seconds": time.perf_counter() - started}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    for logger in loggers:
        logger.log({"event": "summary", **{f"personalize/selected/{k}": v
                                           for k, v in (result.selected or {}).items()}})
    _draw(out, loggers)
    return summary


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
    _check_overridable(overrides, PERSONALIZE_OVERRIDABLE, "personalizing a finished run")
    cfg = load_config(run_dir / "config.yaml", overrides)
    prompt, meta = load_prompt(run_dir / "global_prompt.safetensors")
    if meta.get("round") != str(cfg.algorithm.rounds):
        raise ConfigError(f"key 'algorithm.rounds': the run in {run_dir} stopped at round {meta.get('round')} "
                          f"of {cfg.algorithm.rounds}; personalize a finished run")
    return cfg, prompt


def _check_overridable(overrides: list[str], allowed: tuple[str, ...], doing: str) -> None:
    """Refuse, naming the key, an override outside the ``allowed`` prefixes."""
    for item in overrides:
        key = item.split("=", 1)[0]
        if not key.startswith(allowed):
            raise ConfigError(f"key '{key}': cannot change when {doing} (only "
                              f"{', '.join(k + '*' for k in allowed)} may)")


def _name_from(overrides: list[str]) -> str:
    """A directory name from the personalize.* overrides, e.g. ``l2_strength=0.1,optimizer.lr=0.01``."""
    parts = [o.removeprefix("personalize.") for o in overrides if o.startswith("personalize.")]
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", ",".join(parts))[:120] or "default"


def _draw(out: Path, loggers: list[MetricLogger], recurse: bool = True) -> None:
    """Redraw the figures from the files just written and hand them to the loggers (W&B)."""
    from rayfed import plots

    for png in plots.plot_path(out) if recurse else plots.plot_run(out):
        for logger in loggers:
            logger.log({"event": "image", "key": f"plots/{png.stem}", "path": str(png)})


def _result(record: dict[str, Any]) -> RoundResult:
    """A RoundResult from its JSON form (client ids come back as strings)."""
    return RoundResult(record["round_idx"], record["metrics"],
                       {int(cid): m for cid, m in record["client_metrics"].items()})


def _scores(result: RoundResult, split: str) -> dict[str, float]:
    names = {m: metric_key(split, m, phase=EVAL) for m in METRICS}
    return {m: result.metrics[name] for m, name in names.items() if name in result.metrics}
