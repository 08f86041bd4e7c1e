"""The orchestrator: build data, model and actors; run rounds; evaluate; write results.

One function, read top to bottom. Everything it calls is a small piece with its own file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rayfed.checkpoint import save_prompt
from rayfed.config import ExperimentConfig, to_yaml
from rayfed.data.sources import federated_data
from rayfed.loggers import ConsoleLogger, JsonlLogger, MetricLogger
from rayfed.runtime.driver import alpha_key
from rayfed.types import RoundResult

SUMMARY_METRICS = ("loss", "exact_match", "rouge_l")


def run_experiment(cfg: ExperimentConfig, loggers: list[MetricLogger] | None = None) -> dict[str, Any]:
    """Run one federated prompt-tuning experiment and return its summary (also in summary.json)."""
    started = time.perf_counter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    (out / "metrics.jsonl").unlink(missing_ok=True)  # a rerun into the same directory starts clean
    loggers = loggers if loggers is not None else [ConsoleLogger(cfg.algorithm.rounds)]
    loggers = [*loggers, JsonlLogger(out / "metrics.jsonl")]

    # --- Data: load and partition once, here; shards travel to the client actors once.
    data = federated_data(cfg)

    # --- Runtime: in-process for debugging, or client actors plus a driver actor on Ray.
    actors: list[Any] = []
    if cfg.runtime.executor == "local":
        from rayfed.runtime.driver import Driver, InProcessExecutor
        from rayfed.runtime.worker import ClientWorker

        driver: Any = Driver(cfg, InProcessExecutor(ClientWorker(cfg, list(data.clients), list(data.global_test))))
    else:
        from rayfed.builtin_models import resolve_model_path
        from rayfed.runtime import ray_backend

        resolve_model_path(cfg.model.name)  # convert a built-in model once, before actors load it
        ray_backend.start_ray(cfg.ray)
        driver, actors = ray_backend.launch(cfg, data)

    try:
        # --- Rounds: evaluate the untrained prompt, then train, evaluating every eval_every rounds.
        initial = driver.evaluate(0)
        _log(loggers, "round", initial)
        final = initial
        for round_idx in range(1, cfg.algorithm.rounds + 1):
            result = driver.run_round(round_idx)
            evaluation = None
            if round_idx % cfg.eval.eval_every == 0 or round_idx == cfg.algorithm.rounds:
                evaluation = final = driver.evaluate(round_idx)
            _log(loggers, "round", result, evaluation)
            save_prompt(out / "global_prompt.safetensors", driver.global_prompt(),
                        {"round": str(round_idx), "config": cfg.name})

        # --- Personalization: each client fine-tunes the final global prompt; the driver scores
        # global/local interpolations on the client's own data and on the global test set.
        personal = driver.personalize(cfg.algorithm.rounds) if cfg.personalize.enabled else None
        if personal is not None:
            _log(loggers, "personalize", personal)
    finally:
        if actors:
            ray_backend.shutdown(actors, driver)
        for logger in loggers:
            logger.close()

    # --- Results.
    summary = {
        "name": cfg.name,
        "rounds": cfg.algorithm.rounds,
        "initial": _global(initial),
        "final": _global(final),
        "final_local": {k: v for k, v in final.metrics.items() if k.startswith("eval/local/")},
        "clients": {str(cid): m for cid, m in final.client_metrics.items()},
        "seconds": time.perf_counter() - started,
    }
    if personal is not None:
        summary["personalization"] = {
            f"alpha_{alpha:g}": {split: {k: personal.metrics[f"{alpha_key(alpha)}/{split}/{k}_mean"]
                                         for k in SUMMARY_METRICS} for split in ("local", "global")}
            for alpha in cfg.personalize.alphas}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    return summary


def _global(result: RoundResult) -> dict[str, float]:
    return {k: result.metrics[f"eval/global/{k}"] for k in SUMMARY_METRICS}


def _log(loggers: list[MetricLogger], kind: str, result: RoundResult, evaluation: RoundResult | None = None) -> None:
    event: dict[str, Any] = {"event": kind, "round": result.round_idx, **result.metrics}
    clients: dict[int, dict[str, float]] = {cid: dict(m) for cid, m in result.client_metrics.items()}
    if evaluation is not None:
        event.update(evaluation.metrics)
        for cid, m in evaluation.client_metrics.items():
            clients.setdefault(cid, {}).update(m)
    for logger in loggers:
        logger.log(event)
        for cid, m in sorted(clients.items()):
            logger.log({"event": "client", "round": result.round_idx, "client_id": cid, **m})
