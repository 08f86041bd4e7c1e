"""Metric names, text metrics (exact match, ROUGE-L) and per-client distribution summaries.

Every metric name in rayfed is built here: ``{phase}/{split}/{metric}`` for one prompt's score
(``eval/global_test/rouge_l``) and ``{phase}/{split}/{metric}_{stat}`` for a distribution over
clients (``personalize/local_val/rouge_l_p10``). Parameters (an interpolation ratio, an epoch)
are fields of a record, never part of a name, so names stay the same across trials.
"""

from __future__ import annotations

import re
import string
from functools import lru_cache

import numpy as np

METRICS = ("loss", "exact_match", "rouge_l")
STATS = ("mean", "p10", "min")
LOCAL_SPLITS = ("local_val", "local_test")  # each client's own held-out data
GLOBAL_SPLITS = ("global_val", "global_test")  # the federation's task mix, disjoint from clients
SPLITS = LOCAL_SPLITS + GLOBAL_SPLITS


def summarize_clients(per_client: dict[int, dict[str, float]], prefix: str) -> dict[str, float]:
    """Mean, p10 and worst over clients of ``{prefix}/{metric}`` for every metric present."""
    out: dict[str, float] = {}
    for name in METRICS:
        key = f"{prefix}/{name}"
        values = [m[key] for m in per_client.values() if key in m]
        if values:
            out.update(distribution(values, key))
    return out


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and articles, collapse whitespace (as SQuAD / SNI)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    # Same settings as the Super-NaturalInstructions evaluation (stemmed ROUGE-L F-measure).
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    return float(_scorer().score(reference, prediction)["rougeL"].fmeasure)


def distribution(values: list[float], prefix: str) -> dict[str, float]:
    """Mean, 10th percentile and worst of per-client values, e.g. ``{prefix}_mean``."""
    arr = np.asarray(values, dtype=float)
    return {f"{prefix}_mean": float(arr.mean()), f"{prefix}_p10": float(np.percentile(arr, 10)),
            f"{prefix}_min": float(arr.min())}
