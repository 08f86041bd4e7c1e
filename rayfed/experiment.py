"""Federated training, read top to bottom: ``run_experiment`` builds the data and the driver, runs
the rounds, evaluates, writes the results (and personalizes at the end if
``personalize.enabled``, through ``rayfed.personalization.phase``); ``resume_experiment``
continues an interrupted run from its checkpoint. Everything it calls is a small piece with its
own file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from rayfed.config import ExperimentConfig, check_overridable, flat_keys, load_config, to_yaml
from rayfed.data.sources import federated_data
from rayfed.errors import MachinesWarning, UserError, raise_if_interrupted
from rayfed.names import EVAL, GLOBAL_SPLITS, METRICS, metric_key
from rayfed.outputs.adapter import ADAPTER_DIR, save_adapter
from rayfed.outputs.checkpoint import CHECKPOINT, load_run_state, save_prompt, save_run_state, truncate_events
from rayfed.outputs.lock import writing
from rayfed.outputs.loggers import MetricLogger, build_loggers, log_round
from rayfed.outputs.plots import draw_and_log
from rayfed.outputs.prompt_files import PROMPT_TOKENS, write_prompt_tokens
from rayfed.outputs.scores import DITTO_SCORES, EXAMPLE_SCORES, RunScores, interval_of, load_example_scores
from rayfed.personalization.cache import RUN_LOCAL_PROMPTS
from rayfed.personalization.phase import check_same_settings, personalize_phase
from rayfed.runtime.driver import payload_bytes
from rayfed.runtime.machine import dashboard_keys, mixed, moved
from rayfed.runtime.progress import phase
from rayfed.runtime.session import open_driver
from rayfed.settings import ModelSettings
from rayfed.types import RoundResult

# What `rayfed resume` may change: where and how the rest of the run runs, not what it trains.
RESUME_OVERRIDABLE = ("runtime.", "ray.", "logging.", "personalize.", "rollout.")


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
    with writing(out, "output_dir"):  # one process at a time writes a run directory
        return _run(cfg, out, loggers, resume=resume, overwrite=overwrite, started=started)


def _run(cfg: ExperimentConfig, out: Path, loggers: list[MetricLogger] | None, *, resume: bool, overwrite: bool,
         started: float) -> dict[str, Any]:
    """:func:`run_experiment` with ``out`` locked."""
    done, state, record = _open_output(out, resume=resume, overwrite=overwrite, identity=run_identity(cfg),
                                       fingerprint=run_fingerprint(cfg))
    if cfg.personalize.enabled and not overwrite:  # refused now, not after the remaining rounds have trained
        check_same_settings(_personal_dir(cfg, out), cfg)

    # --- Data: load and partition once, here; shards travel to the workers once. Bad data or a
    # bad model fails here and in open_driver, before anything in output_dir is touched.
    data = federated_data(cfg)

    with open_driver(cfg, data) as driver:
        machines = driver.machines()
        _note_machines(machines, record.get("machines") if resume else None)
        if resume:
            truncate_events(out / "metrics.jsonl", done)  # rounds after the checkpoint are logged again
        else:
            _clear_run(out)  # --overwrite: nothing of the old run's may pass for the new one's
        (out / "config.yaml").write_text(to_yaml(cfg))
        scores = RunScores(out, keep_through=done if resume else None)
        loggers = build_loggers(cfg, out, loggers, metrics_file=out / "metrics.jsonl", run_id_file=out / WANDB_ID)
        for logger in loggers:  # where it computes, for a dashboard's grouping (W&B run summary)
            logger.log({"event": "summary", **dashboard_keys(machines)})
        try:
            # --- Rounds: evaluate the untrained prompt, then train, evaluating every eval_every rounds.
            traffic = dict(record.get("communication", NO_TRAFFIC)) if resume else dict(NO_TRAFFIC)
            if resume:
                driver.restore(state)
                initial, final = _result(record["initial"]), _result(record["final"])
            else:
                _status(loggers, f"round 0: scoring the untrained prompt ({_eval_size(cfg, data)})")
                with phase("round 0: evaluating", None):
                    initial = final = driver.evaluate(0)
                log_round(loggers, initial)
                scores.add(initial)
            final = _train_rounds(cfg, driver, loggers, out, scores, traffic, first=done + 1, initial=initial,
                                  final=final, machines=record.get("machines", machines) if resume else machines)
            save_adapter(out / ADAPTER_DIR, driver.global_prompt(), ModelSettings.from_config(cfg.model),
                         max_source_tokens=cfg.data.max_source_tokens, max_target_tokens=cfg.data.max_target_tokens,
                         source={"prompt": "global", "round": cfg.algorithm.rounds})
            write_prompt_tokens(out, driver, driver.global_prompt(), cfg.algorithm.rounds)

            # --- Personalization (optional): the same phase `rayfed personalize` runs on a finished run.
            personal = None
            if cfg.personalize.enabled:
                personal = personalize_phase(cfg, driver, driver.global_prompt(), _personal_dir(cfg, out), loggers)
            draw_and_log(out, loggers, recurse=False)
            driver_prompt = driver.global_prompt()
        finally:
            for logger in loggers:
                logger.close()

    # --- Results.
    summary = _run_summary(cfg, initial, final, time.perf_counter() - started, out)
    if data.sites:  # one's own data: which site each client_<id> (and its adapter) is
        summary["sites"] = {str(cid): site for cid, site in enumerate(data.sites)}
    summary["communication"] = {**traffic, "prompt_bytes": float(payload_bytes(driver_prompt))}
    summary["machines"] = machines  # where the driver and each worker computed (since the last resume)
    if resume and record.get("machines") not in (None, machines):
        summary["machines_at_start"] = record["machines"]
    if personal is not None:
        summary["personalization"] = personal
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    return summary


def _note_machines(machines: dict[str, Any], before: dict[str, Any] | None) -> None:
    """Warn where float rounding can make this run differ from a rerun or an uninterrupted run:
    its processes on several kinds of machine, or resumed on other kinds than it started on."""
    for note in (mixed(machines), moved(before, machines) if before else None):
        if note:
            warnings.warn(note, MachinesWarning, stacklevel=3)


def _status(loggers: list[MetricLogger], message: str) -> None:
    """A progress line for the console (not kept in metrics.jsonl)."""
    for logger in loggers:
        logger.log({"event": "status", "message": message})


def _eval_size(cfg: ExperimentConfig, data: Any) -> str:
    """What one evaluation scores: the global sets and, with eval.local, every client's own splits."""
    shared = len(data.global_test) + len(data.global_val)
    if not cfg.eval.local:
        return f"{shared} global examples"
    own = sum(len(c.test) + len(c.val) for c in data.clients)
    return f"{shared} global examples; {own} of the {len(data.clients)} clients' own"


def _personal_dir(cfg: ExperimentConfig, out: Path) -> Path:
    return out / "personalize" / (cfg.personalize.name or "default")


def run_identity(cfg: ExperimentConfig) -> str:
    """What makes a run the run it is, for its checkpoint: the seed and a hash of every key
    except those a resume may change (RESUME_OVERRIDABLE), the name and the output directory."""
    digest = hashlib.sha256(json.dumps(_determining(cfg), sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"seed {cfg.seed}, config {digest}"


def run_fingerprint(cfg: ExperimentConfig) -> dict[str, Any]:
    """The keys behind :func:`run_identity`, flattened (``algorithm.rounds``: 20), and the rayfed
    version that trains them: kept in the checkpoint so that a refused resume names what differs."""
    from rayfed import __version__

    return {"rayfed": __version__, **flat_keys(_determining(cfg))}


# Keys added to the config after runs were checkpointed, with the value that reproduces what runs
# did before the key existed. At that value a key is left out of the identity and fingerprint, so
# a checkpoint written before it was added still resumes; any other value makes another run.
ADDED_KEYS: dict[str, Any] = {"algorithm.proximal_mu": 0.0, "model.dtype": "float32", "model.peft": "prompt_tuning",
                              "model.lora_rank": 8, "model.lora_alpha": 16.0, "model.lora_targets": None,
                              "communication.compress": "none",
                              "communication.topk_fraction": 0.1, "algorithm.ditto_lambda": 0.1,
                              "eval.ditto_global_examples": None}


def _determining(cfg: ExperimentConfig) -> dict[str, Any]:
    keys = {k: v for k, v in asdict(cfg).items()
            if k not in ("name", "output_dir") and not any(p.startswith(f"{k}.") for p in RESUME_OVERRIDABLE)}
    for dotted, before in ADDED_KEYS.items():
        section, key = dotted.split(".")
        if section in keys and key in keys[section] and keys[section][key] == before:
            keys[section] = {k: v for k, v in keys[section].items() if k != key}
            if not keys[section]:  # a section added whole, at its old behaviour
                del keys[section]
    return keys


def _refuse_foreign(checkpoint: Path, record: dict[str, Any], identity: str, fingerprint: dict[str, Any]) -> None:
    """Stop a resume whose checkpoint another run wrote (a copied checkpoint, an edited config) or
    another rayfed version, naming what differs."""
    old = record.get("fingerprint") or {}
    changed = [f"{k}: {old.get(k)!r} -> {fingerprint.get(k)!r}" for k in sorted({*old, *fingerprint})
               if old and old.get(k) != fingerprint.get(k)]
    if (record.get("identity") and record["identity"] != identity) or changed:
        what = "; ".join(changed[:6]) + (f"; and {len(changed) - 6} more" if len(changed) > 6 else "")
        raise UserError(f"{checkpoint} was written by another run than the one {checkpoint.parent / 'config.yaml'} "
                        f"describes ({what or record['identity'] + ' -> ' + identity}): a copied checkpoint, an edited "
                        f"config or another rayfed version; resume it with its own config and version, or start over "
                        f"with `rayfed run --overwrite`")


def _open_output(out: Path, *, resume: bool, overwrite: bool, identity: str, fingerprint: dict[str, Any],
                 ) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]]:
    """Check that ``out`` can be written and holds no run (unless resuming or overwriting); return
    the checkpoint's ``(round, driver state, record)`` when resuming (refused when the checkpoint
    belongs to another run than ``identity``), else a fresh start."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"key 'output_dir': cannot create {out} ({err.strerror or err})") from None
    if not os.access(out, os.W_OK):
        raise UserError(f"key 'output_dir': {out} is not writable")
    checkpoint = out / CHECKPOINT
    if resume:
        done, state, record = load_run_state(checkpoint)
        _refuse_foreign(checkpoint, record, identity, fingerprint)
        return done, state, record
    if not overwrite and ((out / "summary.json").exists() or checkpoint.exists()):
        raise RunExistsError(f"{out} already holds a run: continue it with `rayfed resume {out}`, choose "
                             f"another output_dir, or start over with --overwrite")
    return 0, {}, {}


def _clear_run(out: Path) -> None:
    """Remove an old run's results from ``out``: its checkpoint, metrics, summary, scores, W&B id
    and every personalization of its prompt (each taken under its own lock, so one still being
    written stops the overwrite instead of being deleted under its writer)."""
    personal = out / "personalize"
    with ExitStack() as locks:
        for child in sorted(personal.iterdir() if personal.is_dir() else []):
            if child.is_dir():
                locks.enter_context(writing(child, "--overwrite"))
        for name in (CHECKPOINT, "metrics.jsonl", "summary.json", WANDB_ID, EXAMPLE_SCORES, DITTO_SCORES):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(personal, ignore_errors=True)
        shutil.rmtree(out / RUN_LOCAL_PROMPTS, ignore_errors=True)
        shutil.rmtree(out / ADAPTER_DIR, ignore_errors=True)
        (out / PROMPT_TOKENS).unlink(missing_ok=True)


# Bytes sent to and received from clients over the run so far; kept in the checkpoint's record.
NO_TRAFFIC = {"down_bytes": 0.0, "up_bytes": 0.0}


def _train_rounds(cfg: ExperimentConfig, driver: Any, loggers: list[MetricLogger], out: Path, scores: RunScores,
                  traffic: dict[str, float], *, first: int, initial: RoundResult, final: RoundResult,
                  machines: dict[str, Any]) -> RoundResult:
    """Rounds ``first`` to the last: train, evaluate every ``eval.eval_every`` rounds (and the last),
    log, save the global prompt, checkpoint. ``traffic`` accumulates the rounds' bytes (each round
    event carries the running totals, ``comm/down_bytes_total``, ``comm/up_bytes_total``);
    ``machines``, where the run started (rayfed.runtime.machine), goes into every checkpoint.
    Returns the last evaluation."""
    # The bar counts client trainings: Ditto trains each client's own prompt after the global one.
    trainings = cfg.algorithm.clients_per_round * (2 if cfg.algorithm.name == "ditto" else 1)
    for round_idx in range(first, cfg.algorithm.rounds + 1):
        raise_if_interrupted()  # a Ctrl-C that library code swallowed still stops the run here
        label = f"round {round_idx}/{cfg.algorithm.rounds}"
        with phase(f"{label}: training", trainings):
            result = driver.run_round(round_idx)
        for way in NO_TRAFFIC:
            traffic[way] += result.metrics[f"comm/{way}"]
            result.metrics[f"comm/{way}_total"] = traffic[way]
        evaluation = None
        if round_idx % cfg.eval.eval_every == 0 or round_idx == cfg.algorithm.rounds:
            with phase(f"{label}: evaluating", None):
                evaluation = final = driver.evaluate(round_idx)
            scores.add(evaluation)
        log_round(loggers, result, evaluation)
        save_prompt(out / "global_prompt.safetensors", driver.global_prompt(),
                    {"round": str(round_idx), "config": cfg.name})
        if round_idx % cfg.checkpoint.every == 0 or round_idx == cfg.algorithm.rounds:
            save_run_state(out / CHECKPOINT, round_idx, driver.state(),
                           {"initial": _record(initial), "final": _record(final), "fingerprint": run_fingerprint(cfg),
                            "communication": dict(traffic), "machines": machines},
                           identity=run_identity(cfg))
    return final


def _record(result: RoundResult) -> dict[str, Any]:
    """A RoundResult for the checkpoint's JSON record; its examples are in example_scores.safetensors."""
    return {k: v for k, v in asdict(result).items() if k not in ("examples", "ditto_examples")}


def _intervals(out: Path) -> dict[str, dict[str, list[float]]]:
    """The last evaluation's 95% intervals ([low, high]) per global split and metric, from the
    run's per-example scores (its examples resampled)."""
    if not (out / EXAMPLE_SCORES).is_file():  # a run resumed from before per-example scores were kept
        return {}
    columns = load_example_scores(out / EXAMPLE_SCORES)
    result = {}
    for split in GLOBAL_SPLITS:
        for metric in METRICS:
            found = interval_of(columns, split, metric)
            if found is not None:
                result.setdefault(split, {})[metric] = [found[1], found[2]]
    return result


def _run_summary(cfg: ExperimentConfig, initial: RoundResult, final: RoundResult, seconds: float,
                 out: Path) -> dict[str, Any]:
    """summary.json of a run: the global test scores before and after, the final validation and
    local scores, each client's final scores, and the final global scores' 95% intervals."""
    return {
        "name": cfg.name,
        "rounds": cfg.algorithm.rounds,
        "initial": _scores(initial, "global_test"),
        "final": _scores(final, "global_test"),
        "final_val": _scores(final, "global_val"),
        "final_local": {k: v for k, v in final.metrics.items() if k.startswith("eval/local_")},
        **({"final_ditto": ditto} if (ditto := {k: v for k, v in final.metrics.items() if k.startswith("ditto/")})
           else {}),
        "clients": {str(cid): m for cid, m in final.client_metrics.items()},
        "final_intervals": _intervals(out),
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
    check_overridable(overrides or [], RESUME_OVERRIDABLE, "resuming a run")
    cfg = load_config(run_dir / "config.yaml", [*(overrides or []), f"output_dir={run_dir}"])
    return run_experiment(cfg, loggers, resume=True)


def _result(record: dict[str, Any]) -> RoundResult:
    """A RoundResult from its JSON form (client ids come back as strings)."""
    return RoundResult(record["round_idx"], record["metrics"],
                       {int(cid): m for cid, m in record["client_metrics"].items()})


def _scores(result: RoundResult, split: str) -> dict[str, float]:
    names = {m: metric_key(split, m, phase=EVAL) for m in METRICS}
    return {m: result.metrics[name] for m, name in names.items() if name in result.metrics}
