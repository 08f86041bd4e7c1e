"""Every split and metric name in rayfed, in one scheme (no imports: any module may use it).

One prompt's score is ``{split}/{metric}`` (``global_test/rouge_l``), a distribution over clients
``{split}/{metric}_{stat}`` (``local_val/rouge_l_p10``); an event prefixes its phase:
``eval/global_test/rouge_l`` in a run's round events, ``personalize/local_val/rouge_l_mean`` in a
personalization's. Tune's reports and a search's CSV columns flatten the client mean to
``{split}_{metric}`` (``local_val_rouge_l``), since searchers compare one number per trial.
Parameters (an interpolation ratio, an epoch) are fields of a record, never part of a name.
"""

from __future__ import annotations

METRICS = ("loss", "exact_match", "rouge_l")
STATS = ("mean", "p10", "min")
LOCAL_SPLITS = ("local_val", "local_test")  # each client's own held-out data
GLOBAL_SPLITS = ("global_val", "global_test")  # the federation's task mix, disjoint from clients
SPLITS = LOCAL_SPLITS + GLOBAL_SPLITS
EVAL, PERSONALIZE = "eval", "personalize"  # the phases that score prompts
DITTO = "ditto"  # a round's scores of Ditto's per-client prompts (``ditto/local_val/rouge_l_mean``)


def metric_key(split: str, metric: str, stat: str | None = None, phase: str | None = None) -> str:
    """``[{phase}/]{split}/{metric}[_{stat}]``."""
    name = f"{split}/{metric}" + (f"_{stat}" if stat else "")
    return f"{phase}/{name}" if phase else name


def objective(split: str, metric: str = "rouge_l") -> str:
    """A search's flat report name for the client mean of ``split``'s ``metric``: ``local_val_rouge_l``."""
    return f"{split}_{metric}"


LOCAL_VAL, GLOBAL_VAL = objective("local_val"), objective("global_val")  # what searches select on
OBJECTIVES = (LOCAL_VAL, GLOBAL_VAL, objective("local_test"), objective("global_test"))


def objectives_of(row: dict) -> dict[str, float]:
    """The flat report names from a curve row (``local_val/rouge_l_mean`` -> ``local_val_rouge_l``)."""
    out = {}
    for split in ("local_val", "global_val", "local_test", "global_test"):
        name = metric_key(split, "rouge_l", "mean")
        if name in row:
            out[objective(split)] = float(row[name])
    return out
