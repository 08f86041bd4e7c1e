"""Per-client selection: each client chooses its own epoch and interpolation ratio on its own
validation data, and keeps the global prompt unless a setting beats it reliably.

For client ``c`` and each personalized setting (an epoch > 0 and a ratio > 0), the change from the
global prompt is taken example by example (paired: the same examples before and after) on
``c``'s ``local_val`` and on the ``global_val`` examples ``c`` scored, each with its 95% bootstrap
interval over those examples. A setting is eligible when its local gain is reliably positive
(the interval's lower end above 0) and its global change reliably within the tolerance (no
worse than ``tolerance`` at the interval's worse end); the client takes the eligible setting with
the largest local gain, else keeps the global prompt. The gain is the metric's improvement:
ROUGE-L's rise, or the loss's fall (``personalize.metric``). Test splits are never read to
choose; they score the choices:
per-client selection beside one federation-wide setting, always the global prompt and always
the fully local prompt, each as a paired change from always-global, over clients and examples.

A client's validation split is small (8 examples in the quickstart), so its intervals are wide:
the summary says how many examples each client's best setting would need for its gain to be
told from noise at the width measured.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from rayfed.core.bootstrap import bootstrap_mean
from rayfed.core.selection import LOWER_IS_BETTER

Key = tuple[int, str, int, float]  # (client, split, epoch, ratio)


def per_client_selection(examples: Sequence[tuple], tolerance: float, federation: dict[str, Any] | None,
                         metric: str = "rouge_l") -> dict[str, Any]:
    """Each client's choice, the rule, the fallbacks, the policies compared on test, and how large
    validation splits would need to be. ``examples`` are a personalization's per-example rows
    (``(client, split, epoch, ratio, example_id, loss, exact_match, rouge_l)``); ``federation`` its
    federation-wide selection (a curve row, or None); ``metric`` the score it reads (the loss: lower
    is better, its gain is a fall)."""
    column = {"loss": 5, "exact_match": 6, "rouge_l": 7}[metric]
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    scores: dict[Key, dict[int, float]] = defaultdict(dict)
    for row in examples:
        scores[(int(row[0]), str(row[1]), int(row[2]), float(row[3]))][int(row[4])] = float(row[column])
    clients = sorted({k[0] for k in scores})
    settings = sorted({(k[2], k[3]) for k in scores if k[2] > 0 and k[3] > 0})
    base = min((k[3] for k in scores if k[2] == 0), default=0.0)  # epoch 0 is the global prompt at every ratio
    glob = (0, base)

    choices = {c: _choose(scores, c, settings, glob, tolerance, sign) for c in clients}
    last = max((e for e, _ in settings), default=0)
    fed = (int(federation.get("epoch", 0)), float(federation.get("interp_ratio", 0.0))) if federation else glob
    fed = fed if fed[0] > 0 and fed[1] > 0 else glob
    policies = {"per_client": {c: (ch["epoch"], ch["interp_ratio"]) if not ch["kept_global_prompt"] else glob
                               for c, ch in choices.items()},
                "federation": dict.fromkeys(clients, fed),
                "always_global": dict.fromkeys(clients, glob),
                "always_local": dict.fromkeys(clients, (last, max((r for _, r in settings), default=base)))}
    worse = f"rises above {tolerance:g}" if sign < 0 else f"falls below -{tolerance:g}"
    return {
        "rule": (f"per client: max local_val {metric} gain over the global prompt "
                 f"({'its fall' if sign < 0 else 'its rise'}) "
                 f"among settings whose gain is reliably positive and whose global_val {metric} change never "
                 f"{worse} (95% intervals over the client's examples, paired); none: keep the global prompt"),
        "clients": {str(c): ch for c, ch in choices.items()},
        "fallbacks": sum(ch["kept_global_prompt"] for ch in choices.values()),
        "policies": {name: _score_policy(scores, chosen, glob, metric) for name, chosen in policies.items()},
        "validation_size": _needed_size(choices),
    }


def _choose(scores: dict[Key, dict[int, float]], client: int, settings: list[tuple[int, float]],
            glob: tuple[int, float], tolerance: float, sign: float = 1.0) -> dict[str, Any]:
    """``local_val_gain``: the improvement (``sign`` times the change, its interval reordered);
    ``global_val_change``: the change in the metric's own units."""
    rows = []
    for epoch, ratio in settings:
        change = _paired(scores, client, "local_val", (epoch, ratio), glob)
        global_change = _paired(scores, client, "global_val", (epoch, ratio), glob)
        if change is None or global_change is None:
            continue
        gain = change if sign > 0 else [-change[0], -change[2], -change[1]]
        rows.append({"epoch": epoch, "interp_ratio": ratio, "local_val_gain": gain, "global_val_change": global_change})
    n_val = len(scores.get((client, "local_val", *glob), {}))
    eligible = [r for r in rows if r["local_val_gain"][1] > 0 and
                (r["global_val_change"][1] >= -tolerance if sign > 0 else r["global_val_change"][2] <= tolerance)]
    best = max(rows, key=lambda r: r["local_val_gain"][0], default=None)
    if eligible:
        pick = max(eligible, key=lambda r: (r["local_val_gain"][0], sign * r["global_val_change"][0]))
        return {**pick, "kept_global_prompt": False, "val_examples": n_val, "best_by_mean": best}
    return {"epoch": glob[0], "interp_ratio": glob[1], "kept_global_prompt": True, "val_examples": n_val,
            "best_by_mean": best}


def _paired(scores: dict[Key, dict[int, float]], client: int, split: str, setting: tuple[int, float],
            reference: tuple[int, float]) -> list[float] | None:
    """``[estimate, low, high]`` of the mean change from ``reference`` over the client's examples of
    ``split`` (paired by example id); None when either was not scored."""
    after, before = scores.get((client, split, *setting)), scores.get((client, split, *reference))
    if not after or not before:
        return None
    ids = sorted(set(after) & set(before))
    return list(bootstrap_mean([[np.array([after[i] - before[i] for i in ids])]]))


def _score_policy(scores: dict[Key, dict[int, float]], chosen: dict[int, tuple[int, float]],
                  glob: tuple[int, float], metric: str) -> dict[str, Any]:
    """A policy's test scores: the client mean of each test split and its paired change from
    always-global, with 95% intervals over clients and their examples."""
    out: dict[str, Any] = {}
    for split in ("local_test", "global_test"):
        diffs, means = [], []
        for client, setting in chosen.items():
            after, before = scores.get((client, split, *setting)), scores.get((client, split, *glob))
            if not after or not before:
                continue
            ids = sorted(set(after) & set(before))
            diffs.append(np.array([after[i] - before[i] for i in ids]))
            means.append(float(np.mean([after[i] for i in ids])))
        if diffs:
            out[f"{split}/{metric}_mean"] = statistics.fmean(means)
            out[f"{split}/{metric}_change"] = list(bootstrap_mean([diffs]))
    return out


def _needed_size(choices: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """For each client whose best setting (by mean) gains on average: the validation examples its
    gain would need to clear its interval's half-width, which shrinks as 1 / sqrt(n)."""
    needed, flat = [], 0
    for choice in choices.values():
        best, n = choice.get("best_by_mean"), choice["val_examples"]
        if best is None or n == 0:
            continue
        est, low, high = best["local_val_gain"]
        if est <= 0:
            flat += 1
            continue
        needed.append(math.ceil(n * ((high - low) / 2 / est) ** 2))
    return {"examples_per_client": statistics.median([c["val_examples"] for c in choices.values()]) if choices else 0,
            "needed_median": statistics.median(needed) if needed else None,
            "clients_without_mean_gain": flat, "needed_by_client": needed}
