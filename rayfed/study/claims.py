"""The study's four claims, measured from the result files.

Scores are test ROUGE-L, means over clients: ``local`` = each client's own test split
(personalization), ``global`` = the global test distribution (robustness). Everything chosen
(the federated lr) was chosen on validation data.

A claim's verdict comes from its pre-registered primary comparisons only (``verdicts:`` in the
study file; rayfed.study.primary): *reproduced*, *contradicted* or *inconclusive* by their
Holm-corrected bootstrap intervals. Everything else here is secondary, shown and not voted:
per heterogeneity level, each claim's *parts* (a paired difference per seed in the direction
the claim predicts, with its mean and seed-to-seed standard deviation) and its tables.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import torch

from rayfed.core.selection import pareto_mask
from rayfed.outputs.checkpoint import load_prompt
from rayfed.study.config import StudyConfig
from rayfed.study.layout import (
    Curve,
    at_epoch,
    frontier_points,
    load_curves,
    lr_choice,
    read_json,
    run_dir,
)
from rayfed.study.primary import primary_verdicts, shown_comparisons, withhold_verdicts

CLAIMS = {
    1: "A high personalization lr raises local ROUGE-L fast and drops global ROUGE-L; a lower lr keeps global "
       "higher and needs several times more epochs to reach a similar local score.",
    2: "Small lr + many local epochs: at equal local score, the slow path keeps more global score.",
    3: "FedAvg(Adam) prompts are more robust to later personalization than FedAvg(SGD) and FedSGD.",
    4: "With few local updates, the l2 pull and global/local interpolation each give a better local/global "
       "frontier than plain fine-tuning.",
}


def analyze(s: StudyConfig, out: Path, final: bool = True) -> dict[str, Any]:
    """Every claim at every concentration, from the finished jobs in ``out`` (seeds whose jobs
    are not all finished are left out and counted), and the primary comparisons' verdicts
    (``interim`` unless ``final``: the study has jobs left)."""
    result: dict[str, Any] = {"claims": {str(k): {"text": v, "by_concentration": {}} for k, v in CLAIMS.items()},
                              "selected_lrs": {}, "lr_choices": {}, "seeds": {}, "not_trained": [], "lr_grid": {}}
    for conc in s.concentrations:
        result["lr_grid"][f"{conc:g}"] = lr_grid(s, out, conc)
        try:
            choices = {label: lr_choice(s, out, conc, label) for label in s.algorithms}
        except (FileNotFoundError, KeyError):
            continue
        lrs = {label: c["lr"] for label, c in choices.items()}
        result["selected_lrs"][f"{conc:g}"] = lrs
        result["lr_choices"][f"{conc:g}"] = choices
        seeds = {seed: data for seed in s.seeds if (data := load_seed(s, out, conc, seed, lrs)) is not None}
        result["seeds"][f"{conc:g}"] = sorted(seeds)
        result["not_trained"] += not_trained(s, out, conc, lrs)
        if not seeds:
            continue
        for number, measure in ((1, claim1), (2, claim2), (3, claim3), (4, claim4)):
            parts, table = measure(s, list(seeds.values()))
            result["claims"][str(number)]["by_concentration"][f"{conc:g}"] = {
                "parts": parts, "table": table, "seeds": len(seeds)}
    result["primary"] = primary_verdicts(s, out, result["seeds"], result["selected_lrs"])
    if not final:
        withhold_verdicts(result["primary"])
    result["comparisons"] = shown_comparisons(s, out, result["seeds"], result["selected_lrs"])
    for number, claim in result["claims"].items():
        claim["verdict"] = result["primary"]["claims"].get(number, "not pre-registered")
    return result


# --- Measures -----------------------------------------------------------------------------------

def claim1(s: StudyConfig, seeds: list[dict]) -> tuple[list[dict], dict]:
    p = s.personalize
    high, low = p.lrs[0], p.lrs[-1]
    first = p.eval_every_epochs
    rows = {"epochs to reach the high lr's first-epoch local score": {}, "local gain, first epoch": {},
            "global change, last epoch": {}}
    parts = [
        _part(f"lr {high:g} raises local test ROUGE-L at epoch {first}",
              [at_epoch(d["curves"][high], first)[1] - at_epoch(d["curves"][high], 0)[1] for d in seeds]),
        _part(f"lr {high:g} lowers global test ROUGE-L by epoch {p.epochs}",
              [at_epoch(d["curves"][high], 0)[2] - at_epoch(d["curves"][high], p.epochs)[2] for d in seeds]),
        _part(f"lr {low:g} keeps global higher than lr {high:g} at epoch {p.epochs}",
              [at_epoch(d["curves"][low], p.epochs)[2] - at_epoch(d["curves"][high], p.epochs)[2] for d in seeds]),
    ]
    factors = [_epochs_to_reach(d["curves"][low], at_epoch(d["curves"][high], first)[1], p.epochs) / first
               for d in seeds]
    parts.append(_part(f"lr {low:g} needs more epochs than lr {high:g} to reach its epoch-{first} local score "
                       f"(factor; a curve that never reaches it counts as {p.epochs + p.eval_every_epochs} epochs)",
                       [f - 1 for f in factors]))
    for lr in p.lrs:
        reach = [_epochs_to_reach(d["curves"][lr], at_epoch(d["curves"][high], first)[1], p.epochs) for d in seeds]
        rows["epochs to reach the high lr's first-epoch local score"][f"lr {lr:g}"] = _stats(reach)
        rows["local gain, first epoch"][f"lr {lr:g}"] = _stats(
            [at_epoch(d["curves"][lr], first)[1] - at_epoch(d["curves"][lr], 0)[1] for d in seeds])
        rows["global change, last epoch"][f"lr {lr:g}"] = _stats(
            [at_epoch(d["curves"][lr], p.epochs)[2] - at_epoch(d["curves"][lr], 0)[2] for d in seeds])
    return parts, rows


def claim2(s: StudyConfig, seeds: list[dict]) -> tuple[list[dict], dict]:
    """Each point of the high-lr curve (epoch >= 1) is matched with the point of the lower-lr
    curves (epoch >= 1) nearest in local score; the part is their global difference."""
    high, slower = s.personalize.lrs[0], s.personalize.lrs[1:]
    diffs, gaps = [], []
    for d in seeds:
        pool = [pt for lr in slower for pt in d["curves"][lr] if pt[0] > 0]
        pairs = [(h, min(pool, key=lambda q: abs(q[1] - h[1]))) for h in d["curves"][high] if h[0] > 0]
        diffs.append(statistics.fmean(q[2] - h[2] for h, q in pairs))
        gaps.append(statistics.fmean(abs(q[1] - h[1]) for h, q in pairs))
    parts = [_part(f"at matched local score, lrs {', '.join(f'{lr:g}' for lr in slower)} keep more global "
                   f"test ROUGE-L than lr {high:g}", diffs)]
    return parts, {"matched": {"global difference (slow - fast)": _stats(diffs), "local gap (absolute)": _stats(gaps)}}


def claim3(s: StudyConfig, seeds: list[dict]) -> tuple[list[dict], dict]:
    """Robustness of an algorithm's prompt: its global test change under personalization at
    ``robustness_lr``, averaged over the evaluated epochs after 0."""
    main = s.personalize.main_algorithm
    robust = {label: [_robustness(d["robustness"][label]) for d in seeds] for label in s.algorithms}
    parts = [_part(f"{main} loses less global test ROUGE-L than {label}",
                   [a - b for a, b in zip(robust[main], robust[label], strict=True)])
             for label in s.algorithms if label != main]
    table = {label: {"global before": _stats([at_epoch(d["robustness"][label], 0)[2] for d in seeds]),
                     "global after (last epoch)": _stats([d["robustness"][label][-1][2] for d in seeds]),
                     "mean global change": _stats(robust[label]),
                     "local gain (last epoch)": _stats([c[-1][1] - at_epoch(c, 0)[1]
                                                        for c in (d["robustness"][label] for d in seeds)]),
                     "prompt row norm": _stats([d["prompt_norm"][label] for d in seeds]),
                     "row shift (last epoch)": _stats([d["shift"][label][0] for d in seeds]),
                     "row shift / row norm": _stats([d["shift"][label][1] for d in seeds])}
             for label in s.algorithms}
    return parts, table


def claim4(s: StudyConfig, seeds: list[dict]) -> tuple[list[dict], dict]:
    """Each method's points after ``few_epochs`` (plus the global prompt) and the area they
    dominate above the worst local and global score of all three (hypervolume, larger is better).
    Plain fine-tuning trades off through the lr (every lr curve up to ``few_epochs``), l2 through
    its strength, interpolation through the ratio.

    A point that fell apart (worse on both scores than the global prompt, which every method
    holds) adds no area, but it moves the corner down and so weighs every method's extent more.
    The table therefore also gives the areas above the corner of the points the global prompt does
    not dominate: a sensitivity check, not part of the verdict."""
    volumes: dict[str, list[float]] = {"plain": [], "l2": [], "interpolation": []}
    robust: dict[str, list[float]] = {m: [] for m in volumes}
    for d in seeds:
        pts = frontier_points(s, d)
        for store, ref in ((volumes, _corner(pts)), (robust, _corner(pts, skip_dominated=True))):
            for method, points in pts.items():
                store[method].append(hypervolume(points, ref))
    parts = [_part(f"{m} dominates more of the local/global plane than plain fine-tuning",
                   [a - b for a, b in zip(volumes[m], volumes["plain"], strict=True)]) for m in ("l2", "interpolation")]
    table = {}
    for name, store in (("hypervolume", volumes),
                        ("hypervolume, corner without the points the global prompt dominates", robust)):
        table[name] = {m: _stats(v) for m, v in store.items()}
        table[f"{name}: minus plain's"] = {m: _stats([a - b for a, b in zip(store[m], store["plain"], strict=True)])
                                           for m in ("l2", "interpolation")}
    return parts, table


def _corner(pts: dict[str, list[tuple[float, float]]], skip_dominated: bool = False) -> tuple[float, float]:
    """The worst local and the worst global score among all methods' points; with
    ``skip_dominated``, among those the global prompt (each method's first point) does not
    dominate."""
    start = pts["plain"][0]
    points = [pt for v in pts.values() for pt in v]
    if skip_dominated:
        points = [pt for pt in points if pt == start or pt[0] > start[0] or pt[1] > start[1]]
    return min(x for x, _ in points), min(y for _, y in points)


def hypervolume(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """The area of the region the points dominate above ``ref`` (both coordinates maximized)."""
    front = sorted({pt for pt, keep in zip(points, pareto_mask(points), strict=True) if keep}, reverse=True)
    area, prev_y = 0.0, ref[1]
    for x, y in front:  # x falls, y rises along the front
        area += max(x - ref[0], 0.0) * max(y - prev_y, 0.0)
        prev_y = max(prev_y, y)
    return area


# --- Secondary parts ----------------------------------------------------------------------------

def _part(text: str, diffs: list[float]) -> dict[str, Any]:
    """A secondary measure: per-seed paired differences, their mean and seed-to-seed spread."""
    return {"text": text, "diffs": diffs, "mean": statistics.fmean(diffs),
            "std": statistics.stdev(diffs) if len(diffs) > 1 else None}


def lr_grid(s: StudyConfig, out: Path, conc: float) -> dict[str, dict[str, dict[str, float]]]:
    """The first seed's final global ROUGE-L (validation, which selects, and test) at every lr of
    every algorithm's grid, for the runs that have finished."""
    grid: dict[str, dict[str, dict[str, float]]] = {}
    for label, arm in s.algorithms.items():
        for lr in arm.lrs:
            path = run_dir(out, label, conc, lr, s.seeds[0]) / "summary.json"
            if path.is_file():
                summary = read_json(path)
                grid.setdefault(label, {})[f"{lr:g}"] = {
                    "global_val": summary["final_val"].get("rouge_l"), "global_test": summary["final"].get("rouge_l"),
                    "global_val_interval": summary.get("final_intervals", {}).get("global_val", {}).get("rouge_l")}
    return grid


def not_trained(s: StudyConfig, out: Path, conc: float, lrs: dict[str, float]) -> list[str]:
    """The finished runs whose final prompt scores below the untrained one on global validation
    ROUGE-L (diverged, or too high an lr): a robustness comparison with them says little."""
    notes = []
    for label in s.algorithms:
        for seed in s.seeds:
            path = run_dir(out, label, conc, lrs[label], seed) / "summary.json"
            if path.is_file():
                end = read_json(path)["final_val"]
                first = _initial_val(path.parent)
                if first is not None and end.get("rouge_l", 0.0) < first:
                    notes.append(f"{label} at concentration {conc:g}, seed {seed} (lr {lrs[label]:g}): global "
                                 f"validation ROUGE-L fell from {first:.4f} untrained to {end['rouge_l']:.4f}")
    return notes


def _initial_val(run: Path) -> float | None:
    for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        if event.get("event") == "round" and event.get("round") == 0:
            return event.get("eval/global_val/rouge_l")
    return None


# --- Reading the result files -------------------------------------------------------------------

def load_seed(s: StudyConfig, out: Path, conc: float, seed: int, lrs: dict[str, float]) -> dict | None:
    """One seed's curves (``rayfed.study.layout.load_curves``) with each algorithm's prompt row norm
    and how far personalization moved it, or None while any of its jobs is unfinished."""
    d = load_curves(s, out, conc, seed, lrs)
    if d is None:
        return None
    prompts = {label: load_prompt(d["runs"][label] / "global_prompt.safetensors")[0] for label in s.algorithms}
    d["prompt_norm"] = {label: prompt_norm(prompts[label]) for label in s.algorithms}
    job = f"lr={s.personalize.robustness_lr:g}"
    d["shift"] = {label: local_prompt_shift(d["runs"][label] / "personalize" / job / "personalization.jsonl")
                  for label in s.algorithms}
    return d


def prompt_norm(prompt: torch.Tensor) -> float:
    """The mean L2 norm of a global prompt's rows (one per virtual token): how far training took
    the prompt, and the scale a fixed personalization step is measured against."""
    return prompt.float().norm(dim=-1).mean().item()


def local_prompt_shift(records: Path) -> tuple[float, float]:
    """How far a personalization moved the clients' prompts by its last epoch, mean over clients:
    ``prompt_shift`` and ``prompt_shift_relative`` (rayfed.personalization.curves) from the train
    records of its ``personalization.jsonl``; NaN (reported as missing) when it has none."""
    rows = [json.loads(line) for line in records.read_text(encoding="utf-8").splitlines()] if records.is_file() else []
    train = [r for r in rows if r.get("split") == "train" and "prompt_shift" in r]
    if not train:
        return math.nan, math.nan
    last = max(r["epoch"] for r in train)
    return (statistics.fmean(r["prompt_shift"] for r in train if r["epoch"] == last),
            statistics.fmean(r["prompt_shift_relative"] for r in train if r["epoch"] == last))


def _epochs_to_reach(curve: Curve, target: float, epochs: int) -> float:
    """The first evaluated epoch whose local score reaches ``target``; past the end if none."""
    step = curve[1][0] - curve[0][0] if len(curve) > 1 else 1
    return next((e for e, loc, _ in curve if e > 0 and loc >= target - 1e-12), epochs + step)


def _robustness(curve: Curve) -> float:
    base = at_epoch(curve, 0)[2]
    return statistics.fmean(g - base for e, _, g in curve if e > 0)


def _stats(values: list[float]) -> dict[str, float | None]:
    clean = [v for v in values if math.isfinite(v)]
    return {"mean": statistics.fmean(clean) if clean else None,
            "std": statistics.stdev(clean) if len(clean) > 1 else None, "n": len(clean)}

