"""Text metrics (exact match, ROUGE-L) and per-client distribution summaries; the names they
are reported under are ``rayfed.names``'."""

from __future__ import annotations

import re
import string
from functools import lru_cache

import numpy as np

from rayfed.names import METRICS


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
