"""The study's figures, redrawn from its result files (``rayfed plot OUT`` on a study directory):

- ``curves.png`` (claims 1-2): the main algorithm's personalization paths in the (local, global)
  test ROUGE-L plane, one per lr, epochs marked, mean over seeds;
- ``robustness.png`` (claim 3): global test ROUGE-L change per personalization epoch at the
  robustness lr, one line per federated algorithm, mean ± std over seeds;
- ``frontier.png`` (claim 4): after few local updates, the points and Pareto frontiers of plain
  fine-tuning, the l2 pull and interpolation, mean over seeds;
- ``verdicts.png``: every primary comparison's estimate with its 95% interval and the wider
  interval at Holm's level that decides it, coloured by verdict, beside 0 and the effect the
  study was sized for (from ``study.json``).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np

from rayfed.core.selection import pareto_mask
from rayfed.outputs.plots import REF_STYLE, _save, plt
from rayfed.study.config import StudyConfig, load_study
from rayfed.study.layout import frontier_points, load_curves, selected_lrs

PLANE = ("local test ROUGE-L (personalization)", "global test ROUGE-L (robustness)")
METHOD_STYLE = {"plain": ("C7", "o"), "l2": ("C2", "s"), "interpolation": ("C4", "^")}


def plot_study_dir(out: Path) -> list[Path]:
    """The figures of the study in ``out`` (its ``study.yaml``), as ``rayfed plot OUT`` draws them."""
    return plot_study(load_study(out / "study.yaml"), out)


def plot_study(s: StudyConfig, out: Path) -> list[Path]:
    per_conc = {}
    for conc in s.concentrations:
        try:
            lrs = selected_lrs(s, out, conc)
        except (FileNotFoundError, KeyError):
            continue
        seeds = [d for seed in s.seeds if (d := load_curves(s, out, conc, seed, lrs)) is not None]
        if seeds:
            per_conc[conc] = seeds
    if not per_conc:
        return []
    figures = [_curves(s, per_conc, out), _robustness(s, per_conc, out), _frontier(s, per_conc, out)]
    analysis = json.loads((out / "study.json").read_text(encoding="utf-8")) if (out / "study.json").is_file() else {}
    if analysis.get("primary", {}).get("comparisons"):
        figures.append(_verdicts(analysis["primary"]["comparisons"], out, analysis.get("jobs_finished"),
                                  analysis.get("jobs_total")))
    return figures


VERDICT_COLOR = {"reproduced": "C2", "contradicted": "C3", "inconclusive": "C7", "interim": "C0"}


def _verdicts(rows: list[dict], out: Path, finished: int | None = None, total: int | None = None) -> Path:
    fig, ax = plt.subplots(figsize=(8.5, 0.45 * len(rows) + 1.6))
    for y, r in enumerate(reversed(rows)):
        rl = r["rouge_l"]
        verdict = rl.get("verdict", "secondary")
        color = VERDICT_COLOR.get(verdict, "C0")
        if "decisive_low" in rl:
            ax.plot([rl["decisive_low"], rl["decisive_high"]], [y, y], color=color, lw=1, alpha=0.5)
        ax.plot([rl["low"], rl["high"]], [y, y], color=color, lw=3)
        ax.plot([rl["estimate"]], [y], "o", color=color, ms=5)
        sign = -1 if r["direction"] == "less" else 1
        ax.plot([sign * r["effect"]], [y], "|", color="black", ms=9)
        ax.annotate(verdict, (1.01, y), xycoords=("axes fraction", "data"), fontsize=7, va="center", color=color)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(rows)), [f"claim {r['claim']}, c{r['concentration']}: {r['name']}" for r in reversed(rows)],
                  fontsize=7)
    title = "primary comparisons: 95% interval (thick), interval at Holm's level (thin), | sized-for effect"
    if finished is not None and total is not None and finished < total:
        title = f"interim, {finished} of {total} jobs: no verdict yet\n{title}"
    ax.set(xlabel="test ROUGE-L difference (a - b, or frontier gap)", title=title)
    ax.title.set_fontsize(9)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out / "verdicts.png")


def _label(ax, xy: tuple[str, str], title: str) -> None:
    ax.set(xlabel=xy[0], ylabel=xy[1], title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _axes(n: int, title: str):
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.4), squeeze=False)
    fig.suptitle(title, fontsize=10, y=1.03)  # above the two-line panel titles
    return fig, axes[0]


def _mean_curve(curves: list[list[tuple[int, float, float]]]) -> tuple[list[int], np.ndarray, np.ndarray]:
    epochs = [e for e, _, _ in curves[0]]
    local = np.array([[pt[1] for pt in c] for c in curves]).mean(axis=0)
    glob = np.array([[pt[2] for pt in c] for c in curves]).mean(axis=0)
    return epochs, local, glob


def _curves(s: StudyConfig, per_conc: dict, out: Path) -> Path:
    p = s.personalize
    fig, axes = _axes(len(per_conc), f"{p.main_algorithm} prompt personalized at each lr (SGD), mean over seeds")
    colors = plt.cm.viridis(np.linspace(0.0, 0.85, len(p.lrs)))
    for ax, (conc, seeds) in zip(axes, per_conc.items(), strict=True):
        for lr, color in zip(p.lrs, colors, strict=True):
            epochs, local, glob = _mean_curve([d["curves"][lr] for d in seeds])
            ax.plot(local, glob, "-o", color=color, ms=4, label=f"lr {lr:g}")
            for e, x, y in zip(epochs, local, glob, strict=True):
                if e > 0:
                    ax.annotate(str(e), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points", color=color)
        _, local0, glob0 = _mean_curve([d["curves"][p.lrs[0]][:1] for d in seeds])
        ax.scatter(local0, glob0, color="gold", label="global prompt (epoch 0)", **REF_STYLE)
        _label(ax, PLANE, f"concentration {conc:g} ({len(seeds)} seed(s))\nnumbers: epochs")
    return _save(fig, out / "curves.png")


def _robustness(s: StudyConfig, per_conc: dict, out: Path) -> Path:
    p = s.personalize
    fig, axes = _axes(len(per_conc), f"global test ROUGE-L change under personalization at lr {p.robustness_lr:g}")
    for ax, (conc, seeds) in zip(axes, per_conc.items(), strict=True):
        for i, label in enumerate(s.algorithms):
            curves = [d["robustness"][label] for d in seeds]
            epochs = [e for e, _, _ in curves[0]]
            change = np.array([[pt[2] - c[0][2] for pt in c] for c in curves])
            mean, std = change.mean(axis=0), change.std(axis=0, ddof=1) if len(curves) > 1 else 0 * change[0]
            ax.plot(epochs, mean, "-o", ms=4, color=f"C{i}", label=label)
            ax.fill_between(epochs, mean - std, mean + std, color=f"C{i}", alpha=0.15)
        ax.axhline(0, color="black", lw=0.8)
        _label(ax, ("personalization epoch", "change in global test ROUGE-L"),
               f"concentration {conc:g} ({len(seeds)} seed(s))\nband: ± std over seeds")
    return _save(fig, out / "robustness.png")


def _frontier(s: StudyConfig, per_conc: dict, out: Path) -> Path:
    p = s.personalize
    fig, axes = _axes(len(per_conc), f"after {p.few_epochs} local epoch(s): plain fine-tuning (lrs) vs l2 "
                                     f"(strengths) vs interpolation (ratios), mean over seeds")
    for ax, (conc, seeds) in zip(axes, per_conc.items(), strict=True):
        by_seed = [frontier_points(s, d) for d in seeds]
        for method, (color, marker) in METHOD_STYLE.items():
            pts = [(statistics.fmean(b[method][i][0] for b in by_seed),
                    statistics.fmean(b[method][i][1] for b in by_seed)) for i in range(len(by_seed[0][method]))]
            ax.scatter(*zip(*pts, strict=True), color=color, marker=marker, alpha=0.6, label=method)
            front = sorted(pt for pt, keep in zip(pts, pareto_mask(pts), strict=True) if keep)
            ax.plot(*zip(*front, strict=True), "-", color=color, lw=1.5)
        ax.scatter([statistics.fmean(b["plain"][0][0] for b in by_seed)],
                   [statistics.fmean(b["plain"][0][1] for b in by_seed)], color="gold", label="global prompt",
                   **REF_STYLE)
        _label(ax, PLANE, f"concentration {conc:g} ({len(seeds)} seed(s))\nlines: Pareto frontiers")
    return _save(fig, out / "frontier.png")
