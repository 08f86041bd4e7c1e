"""Per-example scores on disk: every example of every scored (client, split, epoch, ratio), so any
aggregate can be recomputed and resampled (paired by example id) without rescoring.

One ``example_scores.safetensors`` beside a run's ``metrics.jsonl`` (the global prompt's scores;
Ditto's clients' own prompts in ``ditto_scores.safetensors``) and beside a personalization's
``personalization.jsonl``: a column
per field (``client_id``, ``split``, ``epoch``, ``interp_ratio``, ``example_id``, ``loss``,
``exact_match``, ``rouge_l``), numbers only, never example text. ``split`` indexes the split names
in the metadata. Written with numpy (no torch needed to read it back), atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from rayfed.names import SPLITS
from rayfed.outputs.tensorfile import read_tensors

EXAMPLE_SCORES = "example_scores.safetensors"
DITTO_SCORES = "ditto_scores.safetensors"  # a Ditto run's: each client's own prompt, the same columns
KEYS = ("client_id", "split", "epoch", "interp_ratio", "example_id")
SCORES = ("loss", "exact_match", "rouge_l")
ExampleRow = tuple[int, str, int, float, int, float, float, float]  # KEYS then SCORES, split by name


def save_example_scores(path: Path, rows: Sequence[ExampleRow]) -> None:
    """Write ``rows`` (``(client_id, split, epoch, interp_ratio, example_id, loss, exact_match,
    rouge_l)``) as one column per field."""
    columns = dict(zip((*KEYS, *SCORES), zip(*rows, strict=True) if rows else [()] * 8, strict=True))
    columns["split"] = tuple(SPLITS.index(s) for s in columns["split"])
    arrays = {name: np.asarray(columns[name], dtype=np.float64 if name in ("interp_ratio", *SCORES) else np.int64)
              for name in (*KEYS, *SCORES)}
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    save_file(arrays, str(tmp), metadata={"splits": json.dumps(SPLITS)})
    os.replace(tmp, path)


def load_example_scores(path: Path) -> dict[str, np.ndarray]:
    """The columns of :func:`save_example_scores`'s file; ``split`` as split names."""
    arrays, metadata = read_tensors(path, framework="np")
    splits = json.loads(metadata["splits"])
    out = {name: arrays[name] for name in (*KEYS, *SCORES)}
    out["split"] = np.asarray(splits, dtype=object)[out["split"]] if len(out["split"]) else out["split"].astype(object)
    return out


def rows_of(columns: dict[str, np.ndarray]) -> list[ExampleRow]:
    """:func:`load_example_scores`'s columns back as rows."""
    return [(int(c), str(s), int(e), float(r), int(i), float(lo), float(em), float(rg)) for c, s, e, r, i, lo, em, rg
            in zip(*(columns[name] for name in (*KEYS, *SCORES)), strict=True)]


class ScoreLog:
    """A run's per-example scores as it goes: kept in memory and the file rewritten whole
    (atomically) after each evaluation, so it is never read back while the run goes on. Resuming
    (``keep_through``: the checkpoint's round) starts from the file's rows up to that round; the
    rounds after it are scored again."""

    def __init__(self, path: Path, keep_through: int | None = None):
        self.path = path
        self.rows: list[ExampleRow] = []
        if keep_through is not None and path.is_file():
            self.rows = [r for r in rows_of(load_example_scores(path)) if r[2] <= keep_through]
            save_example_scores(path, self.rows)

    def add(self, rows: Sequence[ExampleRow]) -> None:
        self.rows += rows
        save_example_scores(self.path, self.rows)


class RunScores:
    """A run's two score files: the global prompt's (``example_scores.safetensors``) and, for Ditto,
    each client's own prompt's (``ditto_scores.safetensors``, written once it has rows)."""

    def __init__(self, out: Path, keep_through: int | None = None):
        self.scores = ScoreLog(out / EXAMPLE_SCORES, keep_through)
        self.ditto = ScoreLog(out / DITTO_SCORES, keep_through)

    def add(self, result: Any) -> None:
        """An evaluation's rows (a ``rayfed.types.RoundResult``)."""
        self.scores.add(result.examples)
        if result.ditto_examples or self.ditto.rows:
            self.ditto.add(result.ditto_examples)


def final_scores(run_dir: Path, split: str = "global_test", metric: str = "loss") -> dict[int, float]:
    """Each example's ``metric`` on a global ``split`` at a run's last evaluation, by example id."""
    columns = load_example_scores(Path(run_dir) / EXAMPLE_SCORES)
    keep = (columns["split"] == split) & (columns["epoch"] == columns["epoch"].max())
    return dict(zip(columns["example_id"][keep].tolist(), columns[metric][keep].tolist(), strict=True))


def paired_change(base: dict[int, float], other: dict[int, float]) -> tuple[float, float, float]:
    """``(mean, low, high)`` of ``other - base`` over the examples both scored: a 95% bootstrap
    interval over those examples, each difference paired by example id."""
    from rayfed.core.bootstrap import bootstrap_mean

    ids = sorted(set(base) & set(other))
    return bootstrap_mean([[np.array([other[i] - base[i] for i in ids])]])


def interval_of(columns: dict[str, np.ndarray], split: str, metric: str, epoch: int | None = None,
                ) -> tuple[float, float, float] | None:
    """``(mean, low, high)`` of ``metric`` on ``split`` at ``epoch`` (default: the last), a 95%
    bootstrap interval over its clients and examples (a global set scored once: over its
    examples); None when the file has no such rows."""
    from rayfed.core.bootstrap import bootstrap_mean

    at = columns["split"] == split
    if not at.any():
        return None
    epoch = int(columns["epoch"][at].max()) if epoch is None else epoch
    at &= columns["epoch"] == epoch
    clients = sorted(set(columns["client_id"][at].tolist()))
    groups = [[columns[metric][at & (columns["client_id"] == c)] for c in clients]]
    return bootstrap_mean(groups)
