"""A staged rollout of personalized prompts, with a guard that rolls a site back to the global
prompt (``rayfed rollout RUN_DIR``): pure functions over a personalization's per-example scores.

The sites (clients) are put in a seeded order and split into stages: a pilot of
``pilot_sites``, then stages ``growth`` times as large as the one before, the last taking the
rest. At stage ``t``:

1. **Choose.** The setting (epoch, interpolation ratio) is chosen from the validation splits of
   the sites already rolled out (the pilot chooses for itself), pooled over those sites and their
   examples: the largest local_val gain among the settings whose gain over the global prompt is
   reliably positive and whose global_val change stays above ``-tolerance`` (paired 95% bootstrap
   intervals over sites and examples). None: this stage's sites stay on the global prompt.
2. **Deploy.** The stage's sites get that setting's prompt, and so do earlier sites still on the
   global prompt because their own stage had no supported setting (never a rolled-back site).
3. **Guard.** Every site serving a personalized prompt is checked on its held-back data of this
   stage: window ``t`` of its local_test examples (each site's test examples split into one window
   per stage, as if they arrived over time). A site whose change from the global prompt on its
   window falls below ``-margin`` (the estimate: when in doubt the global prompt is the safe
   side) is rolled back, and serves the global prompt from the next stage on.

Drift is simulated: from stage ``drift_stage`` on, each of ``drift_sites``' windows is taken from
its global_test examples instead (its data changes to the federation's other tasks), where a
prompt personalized to its old data serves worse.

The outcome compares, on the windows each site served after its deployment, the rollout with its
guard and the same rollout without it, each as a paired change from serving the global prompt.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rayfed.core.bootstrap import bootstrap_mean
from rayfed.core.sampling import derive_seed
from rayfed.core.selection import LOWER_IS_BETTER

Setting = tuple[int, float]  # (epoch, interpolation ratio)
Scores = dict[tuple[int, str, Setting], dict[int, float]]  # (client, split, setting) -> {example id: score}
METRIC_COLUMN = {"loss": 5, "exact_match": 6, "rouge_l": 7}


@dataclass(frozen=True)
class RolloutSettings:
    """What one rollout does (the ``rollout:`` config section, typed)."""

    pilot_sites: int = 2
    growth: float = 2.0
    margin: float = 0.05
    tolerance: float = 0.01
    drift_sites: tuple[int, ...] = ()
    drift_stage: int = 1
    seed: int = 0
    metric: str = "rouge_l"


def stage_sites(clients: Sequence[int], pilot_sites: int, growth: float, seed: int) -> list[list[int]]:
    """The sites of each stage: a seeded order of ``clients``, cut into a pilot of ``pilot_sites``
    and stages each ``growth`` times the size of the one before (at least one site; the last
    stage takes what is left)."""
    rng = np.random.default_rng(derive_seed(seed, "rollout"))
    order = [int(c) for c in rng.permutation(sorted(clients))]
    stages, size, start = [], max(1, pilot_sites), 0
    while start < len(order):
        stages.append(sorted(order[start:start + size]))
        start += size
        size = max(1, round(size * growth))
    return stages


def scores_by_key(examples: Sequence[tuple], metric: str) -> Scores:
    """A personalization's per-example rows (``rayfed.outputs.scores.ExampleRow``) by
    ``(client, split, (epoch, ratio))``."""
    column = METRIC_COLUMN[metric]
    scores: Scores = defaultdict(dict)
    for row in examples:
        scores[(int(row[0]), str(row[1]), (int(row[2]), float(row[3])))][int(row[4])] = float(row[column])
    return scores


def plan_rollout(examples: Sequence[tuple], settings: RolloutSettings) -> dict[str, Any]:
    """Run the rollout over a personalization's per-example rows: the stages (each one's support,
    setting, deployments and guard checks), every event in order, each site's final prompt, and
    the outcome with and without the guard."""
    scores = scores_by_key(examples, settings.metric)
    clients = sorted({k[0] for k in scores})
    personalized = sorted({k[2] for k in scores if k[2][0] > 0 and k[2][1] > 0})
    glob: Setting = (0, min((k[2][1] for k in scores if k[2][0] == 0), default=0.0))
    stages = stage_sites(clients, settings.pilot_sites, settings.growth, settings.seed)
    windows = {(c, split): _windows(scores.get((c, split, glob), {}), len(stages))
               for c in clients for split in ("local_test", "global_test")}
    sign = -1.0 if settings.metric in LOWER_IS_BETTER else 1.0  # a change is "better minus global": a loss falls

    served: dict[int, Setting] = {}  # the sites on a personalized prompt now
    sites: dict[int, dict[str, Any]] = {}
    record, events = [], []
    for t, new in enumerate(stages):
        support = new if t == 0 else [c for s in stages[:t] for c in s]
        choice = _choose(scores, support, personalized, glob, settings.tolerance, sign)
        setting = (choice["epoch"], choice["interp_ratio"])
        # This stage's sites, and the earlier ones still waiting on the global prompt (their stage had
        # no supported setting; a rolled-back site never waits), get the setting.
        waiting = [c for c, s in sites.items() if s["epoch"] == 0 and s["rolled_back_at"] is None]
        for c in [*(waiting if not choice["kept_global_prompt"] else []), *new]:
            sites[c] = {"stage": sites.get(c, {}).get("stage", t), "deployed_at": None, "epoch": setting[0],
                        "interp_ratio": setting[1], "rolled_back_at": None}
            events.append({"stage": t, "site": c, "action": "stay_global" if choice["kept_global_prompt"] else "deploy",
                           "epoch": setting[0], "interp_ratio": setting[1]})
            if not choice["kept_global_prompt"]:
                sites[c]["deployed_at"] = t
                served[c] = setting
        checks = []
        for c in sorted(served):
            check = _check(scores, windows, c, t, served[c], glob, settings, sign)
            checks.append(check)
            events.append({"stage": t, "site": c, "action": "check", **check})
            if check["rolled_back"]:
                sites[c]["rolled_back_at"] = t
                events.append({"stage": t, "site": c, "action": "rollback", "epoch": glob[0],
                               "interp_ratio": glob[1]})
        for check in checks:
            if check["rolled_back"]:
                del served[check["site"]]
        record.append({"stage": t, "sites": new, "support": sorted(support), "choice": choice, "checks": checks,
                       "also_deployed": sorted(waiting) if not choice["kept_global_prompt"] else [],
                       "rolled_back": [ch["site"] for ch in checks if ch["rolled_back"]]})
    for site in sites.values():
        serving = site["deployed_at"] is not None and site["rolled_back_at"] is None
        site["final"] = "personalized" if serving else "global"
    return {"rule": _rule_text(settings), "stages": record, "events": events,
            "sites": {str(c): sites[c] for c in sorted(sites)},
            "rollbacks": sum(s["rolled_back_at"] is not None for s in sites.values()),
            "outcome": _outcome(scores, windows, sites, len(stages), glob, settings, sign)}


def final_choices(plan: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Each site's prompt at the rollout's end, as ``save_site_adapters`` takes it: its deployed
    setting, or the global prompt where it stayed on it or was rolled back."""
    return {int(c): {"epoch": s["epoch"], "interp_ratio": s["interp_ratio"], "kept_global_prompt": False}
            if s["final"] == "personalized" else {"epoch": 0, "interp_ratio": 0.0, "kept_global_prompt": True}
            for c, s in plan["sites"].items()}


def _windows(ids_scores: dict[int, float], stages: int) -> list[list[int]]:
    """A site's examples of one split, in id order, cut into one window per stage."""
    return [[int(i) for i in part] for part in np.array_split(np.array(sorted(ids_scores), dtype=np.int64), stages)]


def _diffs(scores: Scores, client: int, split: str, setting: Setting, glob: Setting, sign: float,
           ids: Sequence[int] | None = None) -> np.ndarray | None:
    """The client's per-example change from the global prompt (paired by example id), better
    positive; None when either was not scored."""
    after, before = scores.get((client, split, setting)), scores.get((client, split, glob))
    if not after or not before:
        return None
    keep = sorted(set(after) & set(before) & (set(ids) if ids is not None else set(after)))
    return np.array([sign * (after[i] - before[i]) for i in keep]) if keep else None


def _choose(scores: Scores, support: Sequence[int], personalized: Sequence[Setting], glob: Setting,
            tolerance: float, sign: float) -> dict[str, Any]:
    """The setting the supporting sites' validation splits support (pooled over sites and
    examples), else the global prompt."""
    rows = []
    for setting in personalized:
        gain = [d for c in support if (d := _diffs(scores, c, "local_val", setting, glob, sign)) is not None]
        change = [d for c in support if (d := _diffs(scores, c, "global_val", setting, glob, sign)) is not None]
        if gain and change:
            rows.append({"epoch": setting[0], "interp_ratio": setting[1],
                         "local_val_gain": list(bootstrap_mean([gain])),
                         "global_val_change": list(bootstrap_mean([change]))})
    eligible = [r for r in rows if r["local_val_gain"][1] > 0 and r["global_val_change"][1] >= -tolerance]
    if eligible:
        best = max(eligible, key=lambda r: (r["local_val_gain"][0], r["global_val_change"][0]))
        return {**best, "kept_global_prompt": False}
    surest = max(rows, key=lambda r: r["local_val_gain"][1], default=None)
    return {"epoch": glob[0], "interp_ratio": glob[1], "kept_global_prompt": True, "surest": surest}


def _check(scores: Scores, windows: dict[tuple[int, str], list[list[int]]], client: int, stage: int,
           setting: Setting, glob: Setting, settings: RolloutSettings, sign: float) -> dict[str, Any]:
    """The guard's check of one serving site on its window of this stage."""
    split = _monitored_split(client, stage, settings)
    diffs = _diffs(scores, client, split, setting, glob, sign, windows[(client, split)][stage])
    if diffs is None:  # an empty window (fewer test examples than stages): nothing to judge, keep it
        return {"site": client, "split": split, "examples": 0, "change": None, "rolled_back": False}
    change = list(bootstrap_mean([[diffs]]))
    return {"site": client, "split": split, "examples": int(len(diffs)), "change": change,
            "rolled_back": change[0] < -settings.margin}


def _monitored_split(client: int, stage: int, settings: RolloutSettings) -> str:
    return "global_test" if client in settings.drift_sites and stage >= settings.drift_stage else "local_test"


def _outcome(scores: Scores, windows: dict[tuple[int, str], list[list[int]]], sites: dict[int, dict[str, Any]],
             num_stages: int, glob: Setting, settings: RolloutSettings, sign: float) -> dict[str, Any]:
    """On the windows each deployed site served from its deployment on: the change from serving
    the global prompt, with the guard (a rolled-back site serves the global prompt, a change of 0,
    from the stage after its rollback) and without it, 95% intervals over sites and examples."""
    guarded, unguarded = [], []
    for c, site in sites.items():
        setting = (site["epoch"], site["interp_ratio"])
        if site["deployed_at"] is None:
            continue
        with_guard, without = [], []
        for t in range(site["deployed_at"], num_stages):
            split = _monitored_split(c, t, settings)
            d = _diffs(scores, c, split, setting, glob, sign, windows[(c, split)][t])
            if d is None:
                continue
            without.append(d)
            back = site["rolled_back_at"]
            with_guard.append(np.zeros_like(d) if back is not None and t > back else d)
        if without:
            unguarded.append(np.concatenate(without))
            guarded.append(np.concatenate(with_guard))
    if not guarded:
        return {"deployed_sites": 0}
    return {"deployed_sites": len(guarded), "served_examples": int(sum(len(d) for d in guarded)),
            f"with_guard/{settings.metric}_change": list(bootstrap_mean([guarded])),
            f"without_guard/{settings.metric}_change": list(bootstrap_mean([unguarded])),
            "better": "higher" if sign > 0 else "lower loss (changes are signed so that higher is better)"}


def _rule_text(settings: RolloutSettings) -> str:
    return (f"stages: a seeded pilot of {settings.pilot_sites} site(s), then x{settings.growth:g} per stage; each "
            f"stage's setting: max local_val {settings.metric} gain over the global prompt among settings whose gain "
            f"is reliably positive and whose global_val change stays above -{settings.tolerance:g} (95% intervals "
            f"over the sites rolled out so far and their examples; the pilot chooses for itself), none: the stage "
            f"stays on the global prompt; guard: a serving site whose change on its stage window of held-back "
            f"local_test examples falls below -{settings.margin:g} is rolled back to the global prompt")

