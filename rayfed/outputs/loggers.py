"""Where metrics go: a small protocol with console, JSONL and (lazily imported) W&B loggers.

Every event is a flat dict with an ``event`` kind and structured metric names (rayfed.metrics):
``round`` (``round`` index, ``train/*``, ``eval/{split}/*``, ``time/*``), ``client`` (one client's
scores in a round), ``personalize`` (one curve row: ``epoch``, ``interp_ratio``,
``personalize/{split}/{metric}_{stat}``), ``summary``, and ``image`` / ``table`` (W&B only).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Protocol, TextIO

from rayfed.config import ExperimentConfig
from rayfed.names import EVAL, PERSONALIZE, metric_key
from rayfed.runtime.progress import echo
from rayfed.types import RoundResult


class MetricLogger(Protocol):
    def log(self, event: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class JsonlLogger:
    """Appends one JSON object per event to a file, flushed so a crash keeps them. Images and
    tables are files of their own already, and status lines are progress for the console, so
    they are not copied here."""

    SKIPPED = ("image", "table", "status")

    def __init__(self, path: Path):
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def log(self, event: dict[str, Any]) -> None:
        if event.get("event") in self.SKIPPED:
            return
        self._file.write(json.dumps(event, sort_keys=True) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _size(num_bytes: float) -> str:
    """``1.4 MiB``: bytes in binary units."""
    units, step = ("B", "KiB", "MiB", "GiB", "TiB"), 0
    while num_bytes >= 1024 and step < len(units) - 1:
        num_bytes, step = num_bytes / 1024, step + 1
    return f"{num_bytes:.0f} B" if step == 0 else f"{num_bytes:.1f} {units[step]}"


class ConsoleLogger:
    """One progress line per round and per personalization curve row."""

    SHOWN = (("train/loss", "train_loss"), (metric_key("global_test", "loss", phase=EVAL), "loss"),
             (metric_key("global_test", "exact_match", phase=EVAL), "em"),
             (metric_key("global_test", "rouge_l", phase=EVAL), "rougeL"),
             (metric_key("global_val", "rouge_l", phase=EVAL), "val_rougeL"),
             (metric_key("local_test", "rouge_l", "mean", EVAL), "local_rougeL"))
    PERSONAL = tuple((metric_key(split, "rouge_l", "mean", PERSONALIZE), split)
                     for split in ("local_val", "global_val", "local_test", "global_test"))

    def __init__(self, total_rounds: int, stream: TextIO | None = None):
        self.total_rounds = total_rounds
        self.stream = stream  # None: sys.stdout at the time of each line

    def log(self, event: dict[str, Any]) -> None:
        if event.get("event") == "round":
            parts = [f"round {event['round']:>3}/{self.total_rounds}"]
            parts += [f"{label} {event[key]:.4f}" for key, label in self.SHOWN if key in event]
            if event.get("train/dropped"):
                parts.append(f"dropped {int(event['train/dropped'])}/{int(event['train/sampled'])}"
                             + (" (skipped: below availability.min_clients)" if event.get("train/skipped") else ""))
            if "comm/up_bytes_total" in event:
                parts.append(f"comm {_size(event['comm/down_bytes_total'] + event['comm/up_bytes_total'])}")
            parts.append(f"{event.get('time/round_s', 0.0) + event.get('time/eval_s', 0.0):.1f}s")
        elif event.get("event") == "status":
            parts = [str(event["message"])]
        elif event.get("event") == "personalize":
            parts = [f"personalize epoch {event['epoch']:>3} ratio {event['interp_ratio']:<4g}", "rougeL"]
            parts += [f"{label} {event[key]:.4f}" for key, label in self.PERSONAL if key in event]
        else:
            return
        echo(" | ".join(parts), self.stream or sys.stdout)

    def close(self) -> None:
        pass


def build_loggers(cfg: ExperimentConfig, out: Path, extra: list[MetricLogger] | None, *,
                  metrics_file: Path | None = None, job_type: str = "run",
                  run_id_file: Path | None = None, run_id: str | None = None) -> list[MetricLogger]:
    """``extra`` (default: the console), plus a JSONL file and W&B when configured. ``run_id_file``
    keeps the W&B run id, so a run that is resumed logs into the same W&B run; ``run_id`` gives
    it (a Tune trial's id, so a restarted trial continues its W&B run). The W&B group is
    ``logging.wandb.group``, else the run's name: a run and its personalizations share it."""
    loggers = list(extra) if extra is not None else [ConsoleLogger(cfg.algorithm.rounds)]
    if metrics_file is not None:
        loggers.append(JsonlLogger(metrics_file))
    if cfg.logging.wandb.enabled:
        from omegaconf import OmegaConf

        from rayfed.outputs.wandb_logger import WandbLogger

        out.mkdir(parents=True, exist_ok=True)
        config = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
        name = cfg.name if job_type == "run" else f"{cfg.name}/{out.name}"
        if run_id is None and run_id_file is not None:
            if not run_id_file.is_file():
                import secrets

                run_id_file.write_text(secrets.token_hex(4))  # W&B ids: short, lowercase alphanumeric
            run_id = run_id_file.read_text().strip()
        loggers.append(WandbLogger(cfg.logging.wandb, name=name, config=config, directory=out, job_type=job_type,
                                   run_id=run_id, group=cfg.logging.wandb.group or cfg.name))
    return loggers


def log_round(loggers: list[MetricLogger], result: RoundResult, evaluation: RoundResult | None = None) -> None:
    """One ``round`` event (training and evaluation metrics) and one ``client`` event per client."""
    event: dict[str, Any] = {"event": "round", "round": result.round_idx, **result.metrics, **result.clients}
    clients: dict[int, dict[str, float]] = {cid: dict(m) for cid, m in result.client_metrics.items()}
    if evaluation is not None:
        event.update(evaluation.metrics)
        for cid, m in evaluation.client_metrics.items():
            clients.setdefault(cid, {}).update(m)
    for logger in loggers:
        logger.log(event)
        for cid, m in sorted(clients.items()):
            logger.log({"event": "client", "round": result.round_idx, "client_id": cid, **m})
