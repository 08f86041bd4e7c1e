"""Where a study's jobs live on disk, and what their result files say (JSON only: no torch, no
Ray, so figures and reports can be redrawn anywhere)::

    OUT/c{concentration}/{algorithm}/lr{lr}/seed{seed}/            a federated run
    OUT/c{concentration}/{algorithm}/lr{lr}/seed{seed}/personalize/{name}/
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from rayfed.names import metric_key
from rayfed.study.config import StudyConfig, personalize_jobs

LOCAL, GLOBAL = metric_key("local_test", "rouge_l", "mean"), metric_key("global_test", "rouge_l", "mean")
Curve = list[tuple[int, float, float]]  # (epoch, local, global), ratio 1


def run_dir(out: Path, label: str, concentration: float, lr: float, seed: int) -> Path:
    return out / f"c{concentration:g}" / label / f"lr{lr:g}" / f"seed{seed}"


def selected_lrs(s: StudyConfig, out: Path, concentration: float) -> dict[str, float]:
    """Each algorithm's lr for ``concentration`` (:func:`lr_choice`; KeyError or FileNotFoundError
    while a first-seed run of its grid has not finished)."""
    return {label: lr_choice(s, out, concentration, label)["lr"] for label in s.algorithms}


def lr_choice(s: StudyConfig, out: Path, concentration: float, label: str) -> dict[str, Any]:
    """How algorithm ``label``'s lr is chosen from the first seed's runs: the best final global
    validation ROUGE-L (ties: the earlier lr), if it beats the grid's default (``default_lr``, or
    the middle of the grid) reliably: the lower end of the 95% interval of their paired
    per-example difference (the same global validation examples) above 0. Otherwise the default
    is kept, and ``reason`` says why. ``{"lr", "best", "default", "difference", "reason"}``."""
    arm = s.algorithms[label]
    default = arm.default_lr if arm.default_lr is not None else sorted(arm.lrs)[(len(arm.lrs) - 1) // 2]
    if len(arm.lrs) == 1:
        return {"lr": arm.lrs[0], "best": arm.lrs[0], "default": arm.lrs[0], "difference": None,
                "reason": "the only lr of the grid"}
    runs = {lr: run_dir(out, label, concentration, lr, s.seeds[0]) for lr in arm.lrs}
    scores = [read_json(runs[lr] / "summary.json")["final_val"]["rouge_l"] for lr in arm.lrs]
    best = arm.lrs[max(range(len(scores)), key=lambda i: (scores[i], -i))]
    found = {"best": best, "default": default, "difference": None}
    if best == default:
        return {**found, "lr": default, "reason": "the default has the best global validation ROUGE-L"}
    diff = _paired_difference(runs[best], runs[default])
    if diff is None:
        return {**found, "lr": best, "reason": "the best global validation mean (no per-example scores to "
                                               "compare it with the default)"}
    found["difference"] = list(diff)
    text = f"lr {best:g} minus the default {default:g}: {diff[0]:+.4f} [{diff[1]:+.4f}, {diff[2]:+.4f}]"
    if diff[1] > 0:
        return {**found, "lr": best, "reason": f"reliably better than the default ({text})"}
    return {**found, "lr": default, "reason": f"the default is kept: the best is not reliably better ({text})"}


def _paired_difference(a: Path, b: Path) -> tuple[float, float, float] | None:
    """The two runs' final global validation ROUGE-L, per example, a minus b: mean and 95% interval."""
    from rayfed.core.bootstrap import bootstrap_mean
    from rayfed.outputs.scores import EXAMPLE_SCORES, load_example_scores

    values = []
    for run in (a, b):
        if not (run / EXAMPLE_SCORES).is_file():
            return None
        cols = load_example_scores(run / EXAMPLE_SCORES)
        at = (cols["split"] == "global_val") & (cols["client_id"] == -1)
        if not at.any():
            return None
        at &= cols["epoch"] == cols["epoch"][at].max()  # the final evaluation
        values.append(dict(zip(cols["example_id"][at].tolist(), cols["rouge_l"][at].tolist(), strict=True)))
    ids = sorted(values[0])
    if not ids or set(ids) != set(values[1]):
        return None
    return bootstrap_mean([[np.array([values[0][i] - values[1][i] for i in ids])]])


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
