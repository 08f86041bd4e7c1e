"""``rayfed rollout RUN_DIR``: a finished run's personalization rolled out to its sites in stages
(the rule: rayfed.personalization.rollout), into ``RUN_DIR/rollout/<name>/``.

The rollout reads a personalization's per-example scores: ``RUN_DIR/personalize/<name>/`` when
one with the same settings is there and its local prompts are kept, else it personalizes first
(the clients fine-tune once; their prompts are kept in ``RUN_DIR/.local_prompts/`` for the
next rollout). It writes ``rollout.jsonl`` (every deployment, guard check and rollback, in
order), ``summary.json``, ``rollout.png`` and each site's final prompt as a PEFT adapter in
``adapters/client_<id>/``, and logs them to W&B.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rayfed.config import ConfigError, ExperimentConfig, to_yaml
from rayfed.outputs.adapter import SITE_ADAPTERS
from rayfed.outputs.lock import writing
from rayfed.outputs.loggers import MetricLogger, build_loggers
from rayfed.outputs.plots import draw_and_log
from rayfed.outputs.plots_rollout import ROLLOUT_EVENTS
from rayfed.outputs.scores import EXAMPLE_SCORES, load_example_scores, rows_of
from rayfed.personalization.cache import RUN_LOCAL_PROMPTS, PromptCache, load_local_prompts
from rayfed.personalization.phase import (
    SELECTION_KEYS,
    check_same_settings,
    load_finished_run,
    name_from,
    personalize_run,
    save_site_adapters,
)
from rayfed.personalization.rollout import RolloutSettings, final_choices, plan_rollout
from rayfed.personalization.settings import PersonalizeSettings


def run_rollout(run_dir: str | Path, overrides: list[str] | None = None,
                loggers: list[MetricLogger] | None = None) -> dict[str, Any]:
    """Roll a finished run's personalization out in stages and return the rollout's summary.

    Args:
        run_dir: A directory written by ``run_experiment``.
        overrides: ``key=value`` strings; ``rollout.*``, ``personalize.*``, ``eval.*``, ``runtime.*``,
            ``ray.*`` and ``logging.*`` keys may change.
        loggers: Extra metric loggers (default: the console).

    Raises:
        ConfigError: a key that may not change, or ``personalize.validation`` off (the stages
            choose on validation splits).
    """
    run_dir, overrides = Path(run_dir), list(overrides or [])
    cfg, global_prompt = load_finished_run(run_dir, overrides)
    if not cfg.personalize.validation:
        raise ConfigError("key 'personalize.validation': a rollout chooses each stage's setting on the validation "
                          "splits; leave it true")
    started = time.perf_counter()
    personalization = run_dir / "personalize" / (cfg.personalize.name or name_from(overrides))
    cache = PromptCache(run_dir / RUN_LOCAL_PROMPTS, cfg.seed)  # shared with `rayfed personalize`
    settings = PersonalizeSettings.from_config(cfg.personalize)
    reused = _reusable(personalization, cfg, cache.path(settings))
    if not reused:
        personalize_run(run_dir, cfg, global_prompt, personalization.name, loggers, prompt_cache=cache.root)
    examples = rows_of(load_example_scores(personalization / EXAMPLE_SCORES))
    rollout = RolloutSettings(cfg.rollout.pilot_sites, cfg.rollout.growth, cfg.rollout.margin,
                              cfg.personalize.global_tolerance, tuple(cfg.rollout.drift_sites), cfg.rollout.drift_stage,
                              cfg.seed, cfg.rollout.metric)
    plan = plan_rollout(examples, rollout)

    out = run_dir / "rollout" / (cfg.rollout.name or name_from(overrides, "rollout"))
    with writing(out, "rollout.name"):
        (out / "config.yaml").write_text(to_yaml(cfg))
        with open(out / ROLLOUT_EVENTS, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(e, sort_keys=True) + "\n" for e in plan["events"])
        trained = load_local_prompts(cache.path(settings))
        save_site_adapters(out / SITE_ADAPTERS, cfg, global_prompt, trained, final_choices(plan))
        summary = {"name": out.name, "personalization": str(personalization), "personalization_reused": reused,
                   "settings": asdict(rollout),
                   **{k: v for k, v in plan.items() if k != "events"}, "seconds": time.perf_counter() - started}
        (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
        logs = build_loggers(cfg, out, loggers, job_type="rollout")
        try:
            _log(logs, plan)
            draw_and_log(out, logs)
        finally:
            for logger in logs:
                logger.close()
    return summary


def _reusable(personalization: Path, cfg: ExperimentConfig, prompts: Path) -> bool:
    """Whether the personalization in ``personalization`` has this config's settings, its
    per-example scores and its local prompts (kept by ``rayfed personalize`` or an earlier
    rollout): then nothing is scored again."""
    if not ((personalization / "summary.json").is_file() and (personalization / EXAMPLE_SCORES).is_file()
            and prompts.is_file()):
        return False
    try:  # its scores serve any selection rule: the rollout applies its own
        check_same_settings(personalization, cfg, ignore=SELECTION_KEYS)
    except ConfigError:
        raise ConfigError(f"key 'personalize.name': {personalization} holds a personalization with other settings; "
                          f"give the rollout's its own personalize.name=NAME") from None
    return True


def _log(loggers: list[MetricLogger], plan: dict[str, Any]) -> None:
    """Each stage as status lines, every event as a W&B table, the outcome as summary values."""
    for stage in plan["stages"]:
        choice = stage["choice"]
        chosen = (f"epoch {choice['epoch']}, ratio {choice['interp_ratio']:g}" if not choice["kept_global_prompt"]
                  else "the global prompt (no setting is reliably better on the sites so far)")
        checks = ", ".join(f"{c['site']}: {c['change'][0]:+.3f}" + (" ROLLED BACK" if c["rolled_back"] else "")
                           for c in stage["checks"] if c["change"] is not None)
        message = (f"rollout: stage {stage['stage']}: sites {stage['sites']} get {chosen}; guard "
                   f"{checks or 'nothing to check'}")
        for logger in loggers:
            logger.log({"event": "status", "message": message})
    columns = ["stage", "site", "action", "epoch", "interp_ratio", "split", "examples", "change", "change_low",
               "change_high"]
    rows = [[e["stage"], e["site"], e["action"], e.get("epoch"), e.get("interp_ratio"), e.get("split"),
             e.get("examples"), *(e.get("change") or [None] * 3)] for e in plan["events"]]
    outcome = {f"rollout/{k}": v[0] for k, v in plan["outcome"].items() if isinstance(v, list)}
    for logger in loggers:
        logger.log({"event": "table", "key": "rollout/events", "columns": columns, "rows": rows})
        logger.log({"event": "summary", "rollout/rollbacks": plan["rollbacks"], **outcome})
