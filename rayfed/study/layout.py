"""Where a study's jobs live on disk, and what their result files say (JSON only: no torch, no
Ray, so figures and reports can be redrawn anywhere)::

    OUT/c{concentration}/{algorithm}/lr{lr}/seed{seed}/            a federated run
    OUT/c{concentration}/{algorithm}/lr{lr}/seed{seed}/personalize/{name}/
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rayfed.names import metric_key
from rayfed.study.config import StudyConfig, personalize_jobs

LOCAL, GLOBAL = metric_key("local_test", "rouge_l", "mean"), metric_key("global_test", "rouge_l", "mean")
Curve = list[tuple[int, float, float]]  # (epoch, local, global), ratio 1


def run_dir(out: Path, label: str, concentration: float, lr: float, seed: int) -> Path:
    return out / f"c{concentration:g}" / label / f"lr{lr:g}" / f"seed{seed}"


def selected_lrs(s: StudyConfig, out: Path, concentration: float) -> dict[str, float]:
    """Each algorithm's lr for ``concentration``: the only one, or the best on global validation
    ROUGE-L among the first seed's finished runs (KeyError when one has not finished)."""
    chosen = {}
    for label, arm in s.algorithms.items():
        scores = [read_json(run_dir(out, label, concentration, lr, s.seeds[0]) / "summary.json")["final_val"]["rouge_l"]
                  for lr in arm.lrs] if len(arm.lrs) > 1 else [0.0]
        chosen[label] = arm.lrs[max(range(len(scores)), key=lambda i: (scores[i], -i))]
    return chosen


def load_curves(s: StudyConfig, out: Path, conc: float, seed: int, lrs: dict[str, float]) -> dict | None:
    """One seed's curves (``curves`` by lr, ``robustness`` by algorithm, ``few`` by claim-4 job) and
    its run directories (``runs``), or None while any of its jobs is unfinished."""
    p = s.personalize
    try:
        runs = {label: run_dir(out, label, conc, lrs[label], seed) for label in s.algorithms}
        pers = {label: {name: read_json(runs[label] / "personalize" / name / "summary.json")
                        for name in personalize_jobs(s, label)} for label in s.algorithms}
    except FileNotFoundError:
        return None
    main = pers[p.main_algorithm]
    few = {}
    for name, summary in main.items():
        if name.startswith("few,"):
            by_epoch: dict[int, dict[float, tuple[float, float]]] = {}
            for row in summary["curve"]:
                by_epoch.setdefault(row["epoch"], {})[row["interp_ratio"]] = (row[LOCAL], row[GLOBAL])
            few[name.removeprefix("few,")] = by_epoch
    return {"curves": {lr: curve_of(main[f"lr={lr:g}"]) for lr in p.lrs},
            "robustness": {label: curve_of(pers[label][f"lr={p.robustness_lr:g}"]) for label in s.algorithms},
            "few": few, "runs": runs,
            "robustness_summaries": {label: pers[label][f"lr={p.robustness_lr:g}"] for label in s.algorithms}}


def frontier_points(s: StudyConfig, d: dict) -> dict[str, list[tuple[float, float]]]:
    """Claim 4's points per method after ``few_epochs``, each list starting at the global prompt."""
    p = s.personalize
    few = d["few"]
    start = at_epoch(d["curves"][p.lrs[0]], 0)[1:]  # the global prompt
    plain = [start] + [(loc, glo) for lr in p.lrs for e, loc, glo in d["curves"][lr] if 0 < e <= p.few_epochs]
    l2 = [start] + [few[f"l2={v:g}"][p.few_epochs][1.0] for v in [0.0, *p.l2_strengths]]
    interp = [start] + [few["l2=0"][p.few_epochs][r] for r in sorted(few["l2=0"][p.few_epochs])]
    return {"plain": plain, "l2": l2, "interpolation": interp}


def curve_of(summary: dict) -> Curve:
    return sorted((r["epoch"], r[LOCAL], r[GLOBAL]) for r in summary["curve"] if r["interp_ratio"] == 1.0)


def at_epoch(curve: Curve, epoch: int) -> tuple[int, float, float]:
    return next(pt for pt in curve if pt[0] == epoch)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def finished_seeds(s: StudyConfig, out: Path) -> tuple[dict[str, list[int]], dict[str, dict[str, float]]]:
    """Per concentration (``f"{c:g}"``) with its lrs selected: the seeds whose jobs have all
    finished, and each algorithm's selected lr."""
    seeds, lrs = {}, {}
    for conc in s.concentrations:
        try:
            lrs[f"{conc:g}"] = selected_lrs(s, out, conc)
        except (FileNotFoundError, KeyError):
            continue
        seeds[f"{conc:g}"] = [seed for seed in s.seeds if load_curves(s, out, conc, seed, lrs[f"{conc:g}"]) is not None]
    return seeds, lrs
