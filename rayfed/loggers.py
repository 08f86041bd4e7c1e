"""Where metrics go: a small protocol with console and JSONL implementations.

Every event is a flat dict with an ``event`` kind (``round``, ``client``), a ``round`` index and
structured metric names such as ``eval/global/rouge_l``. A W&B logger plugs in here later.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Protocol, TextIO


class MetricLogger(Protocol):
    def log(self, event: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class JsonlLogger:
    """Appends one JSON object per event to ``metrics.jsonl``, flushed so a crash keeps them."""

    def __init__(self, path: Path):
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def log(self, event: dict[str, Any]) -> None:
        self._file.write(json.dumps(event, sort_keys=True) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class ConsoleLogger:
    """One progress line per round: train loss, global eval metrics, seconds."""

    SHOWN = (("train/loss", "train_loss"), ("eval/global/loss", "loss"),
             ("eval/global/exact_match", "em"), ("eval/global/rouge_l", "rougeL"),
             ("eval/local/rouge_l_mean", "local_rougeL"))

    def __init__(self, total_rounds: int, stream: TextIO = sys.stdout):
        self.total_rounds = total_rounds
        self.stream = stream

    def log(self, event: dict[str, Any]) -> None:
        if event.get("event") != "round":
            return
        parts = [f"round {event['round']:>3}/{self.total_rounds}"]
        parts += [f"{label} {event[key]:.4f}" for key, label in self.SHOWN if key in event]
        seconds = event.get("time/round_s", 0.0) + event.get("time/eval_s", 0.0)
        parts.append(f"{seconds:.1f}s")
        print(" | ".join(parts), file=self.stream, flush=True)

    def close(self) -> None:
        pass
