"""Every figure redrawn from output files alone (standard library, numpy, matplotlib: no torch, no Ray).

``plot_path(dir)`` draws what the files there allow, writing PNGs next to them: a run (``metrics.jsonl``)
-> ``rounds.png``, then each ``personalize/*/`` study (``personalization.jsonl``, ``summary.json``) ->
``curves.png``, ``curves_by_epoch.png``, ``interpolation.png``; the prompt maps (``prompt_tokens.png``,
``drift.png``: rayfed.outputs.plots_prompt); a search (``results.csv``, ``search.json``)
-> ``pareto.png``. A study's figures are drawn by ``rayfed.study.plots`` (``rayfed plot`` picks which).
Interpolation ratio 0 is the global prompt, 1 the client's own (local) prompt.
"""

from __future__ import annotations

import csv
import json
import math
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm, Normalize  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from rayfed.names import EVAL, METRICS, SPLITS, metric_key, objective  # noqa: E402
from rayfed.outputs.plots_prompt import plot_prompt_map, plot_prompt_tokens  # noqa: E402
from rayfed.outputs.plots_prompt import read_json as _read_json  # noqa: E402
from rayfed.outputs.plots_rollout import is_rollout, plot_rollout  # noqa: E402

DPI = 120
SPLIT_STYLE = {"val": "-", "test": "--"}  # validation solid, test dashed, everywhere
REF_STYLE = {"marker": "*", "s": 220, "edgecolors": "black", "zorder": 6}
ROUND_SERIES = [  # (metrics.jsonl key, label, color, line style): global blue, local orange
    (metric_key("global_test", "rouge_l", phase=EVAL), "global test", "C0", "-"),
    (metric_key("global_val", "rouge_l", phase=EVAL), "global val", "C0", "--"),
    (metric_key("local_test", "rouge_l", "mean", EVAL), "local test (client mean)", "C1", "-"),
    (metric_key("local_val", "rouge_l", "mean", EVAL), "local val (client mean)", "C1", "--"),
]
SEL_STYLE = {"s": 260, "facecolors": "none", "edgecolors": "red", "linewidths": 2, "zorder": 7}


def plot_path(path: Path) -> list[Path]:
    """Draw every figure that the files in ``path`` (and its ``personalize/*/`` and ``rollout/*/``
    folders) allow.

    Args:
        path: a run, personalization or search directory (a file inside one also works).

    Returns:
        The PNGs written, next to the files they were drawn from.

    Raises:
        FileNotFoundError: ``path`` holds none of the known output files.
    """
    path = Path(path)
    path = path.parent if path.is_file() else path
    jobs = [(plot_run, path), (plot_prompt_tokens, path)] if (path / "metrics.jsonl").is_file() else []
    for d in [path, *sorted((path / "personalize").glob("*"))]:
        if _is_personalization(d):
            jobs += [(plot_personalization, d), (plot_prompt_map, d)]
    jobs += [(plot_rollout, d) for d in [path, *sorted((path / "rollout").glob("*"))] if is_rollout(d)]
    jobs += [(plot_search, path)] if (path / "results.csv").is_file() or (path / "search.json").is_file() else []
    if not jobs:
        raise FileNotFoundError(f"{path}: no metrics.jsonl, personalization.jsonl, summary.json with a curve, "
                                f"results.csv or search.json to plot")
    return [png for plot, directory in jobs for png in plot(directory)]


def draw_and_log(out: Path, loggers: list[Any], recurse: bool = True) -> None:
    """Redraw the figures of ``out`` (only its run's with ``recurse`` off) from the files just
    written and hand each to the loggers as an ``image`` event (W&B shows them)."""
    for png in plot_path(out) if recurse else [*plot_run(out), *plot_prompt_tokens(out)]:
        for logger in loggers:
            logger.log({"event": "image", "key": f"plots/{png.stem}", "path": str(png)})


def plot_run(run_dir: Path) -> list[Path]:
    """``rounds.png``: ROUGE-L and loss over federated rounds, from the ``round`` events of ``metrics.jsonl``.

    Args:
        run_dir: directory holding ``metrics.jsonl``.

    Returns:
        ``[run_dir / "rounds.png"]``, or ``[]`` when no round event holds a metric.
    """
    run_dir = Path(run_dir)
    rows = sorted((e for e in _read_jsonl(run_dir / "metrics.jsonl") if e.get("event") == "round"),
                  key=lambda e: e.get("round", 0))
    panels = [("ROUGE-L", ROUND_SERIES), ("loss", [("train/loss", "train (sampled clients)", "0.45", "-")]
                                          + [(k.replace("rouge_l", "loss"), *rest) for k, *rest in ROUND_SERIES])]
    panels = [(metric, specs) for metric, specs in panels if any(_series(rows, k)[0].size for k, *_ in specs)]
    if not panels:
        return []
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (metric, specs) in zip(axes[0], panels):
        for key_, label, color, ls in specs:
            x, y = _series(rows, key_)
            if x.size:
                ax.plot(x, y, ls, color=color, label=label, marker="o" if x.size <= 30 else None, ms=3)
            p10 = key_.replace("_mean", "_p10")
            if key_ == metric_key("local_test", "rouge_l", "mean", EVAL) and _series(rows, key_, p10)[0].size:
                ax.fill_between(*_series(rows, key_, p10), color=color, alpha=0.18, lw=0,
                                label="local test p10 to mean")
        ax.set(xlabel="round", ylabel=metric, title=f"{metric} over rounds")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Federated training: {run_dir.resolve().name}", fontsize=11)
    fig.tight_layout()
    return [_save(fig, run_dir / "rounds.png")]


def plot_personalization(pers_dir: Path) -> list[Path]:
    """Personalization figures of one study, from ``summary.json`` (else the per-client records).

    ``curves.png``: global vs local ROUGE-L, one line per interpolation ratio through the epochs;
    ``curves_by_epoch.png``: local and global ROUGE-L (and train loss) per epoch; ``interpolation.png``
    (two ratios or more): ROUGE-L vs ratio at the last and the selected epoch.

    Args:
        pers_dir: directory holding ``personalization.jsonl`` and/or ``summary.json``.

    Returns:
        The PNGs written into ``pers_dir``.
    """
    pers_dir = Path(pers_dir)
    summary = _read_json(pers_dir / "summary.json")
    records = _read_jsonl(pers_dir / "personalization.jsonl") if (pers_dir / "personalization.jsonl").is_file() else []
    curve = [p for p in summary.get("curve") or _curve_from_records(records) if _finite(p.get("interp_ratio"))]
    splits = [s for s in ("val", "test") if any(metric_key(f"local_{s}", "rouge_l", "mean") in p for p in curve)]
    if not splits:
        return []
    ratios = sorted({p["interp_ratio"] for p in curve})
    color = {r: plt.get_cmap("viridis")(0.85 * i / max(len(ratios) - 1, 1)) for i, r in enumerate(ratios)}
    handles = [Line2D([], [], color=color[r], marker="o", label=f"ratio {r:g}") for r in ratios]
    handles += [Line2D([], [], color="0.3", ls=SPLIT_STYLE[s], label=s) for s in splits]
    fig = _PersonalizationFigures(pers_dir, curve, splits, summary.get("reference") or {}, summary.get("selected"),
                                  summary.get("name") or pers_dir.name, color, handles)
    written = [fig.trade_off(ratios[-1]), fig.by_epoch(records)]
    if len(ratios) >= 2:
        written.append(fig.by_ratio())
    return written


class _PersonalizationFigures:
    """The three figures of one personalization, sharing its curve, splits, colours and marks."""

    LOCAL, GLOBAL = metric_key("local_{s}", "rouge_l", "mean"), metric_key("global_{s}", "rouge_l", "mean")

    def __init__(self, out: Path, curve: list[dict], splits: list[str], ref: dict, sel: dict | None, name: str,
                 color: dict, handles: list[Any]):
        self.out, self.curve, self.splits, self.ref, self.sel, self.name = out, curve, splits, ref, sel, name
        self.color, self.handles = color, handles
        # Intervals in the files: say what the bands and bars are.
        self.note = " (bands, bars: 95% intervals)" if any(k.endswith("_mean_low") for k in curve[0]) else ""

    def trade_off(self, most_personal: float) -> Path:
        """``curves.png``: the (local, global) plane, one line per ratio, sparse epoch labels."""
        local, glob, first = self.LOCAL, self.GLOBAL, self.splits[0]
        fig, ax = plt.subplots(figsize=(6.5, 4.8))
        _lines(ax, self.curve, "interp_ratio", self.color, self.splits, local, glob)
        top = sorted((p for p in self.curve if p["interp_ratio"] == most_personal
                      and _finite(p.get(glob.format(s=first))) and _finite(p.get(local.format(s=first)))),
                     key=lambda p: p["epoch"])  # sparse epoch labels, on the most personalized line
        for p in {id(p): p for p in top[:: max(1, math.ceil(len(top) / 5))] + top[-1:]}.values():
            ax.annotate(f"ep {p['epoch']}", (p[local.format(s=first)], p[glob.format(s=first)]), fontsize=7,
                        textcoords="offset points", xytext=(5, 3), color="0.25")
        marks = _mark(ax, self.ref, self.sel, self.splits, local, glob)
        ax.set(xlabel="local ROUGE-L (client's own data, mean over clients)",
               ylabel="global ROUGE-L (global distribution, mean)",
               title=f"Personalization vs robustness: {self.name}{self.note}")
        ax.margins(0.08)
        ax.legend(handles=self.handles + marks, fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
        return _save(fig, self.out / "curves.png")

    def by_epoch(self, records: list[dict]) -> Path:
        """``curves_by_epoch.png``: local and global ROUGE-L per epoch, and the train loss if recorded."""
        train = defaultdict(list)
        for rec in records:
            if rec.get("split") == "train" and _finite(rec.get("loss")):
                train[rec["epoch"]].append(rec["loss"])
        fig, axes = plt.subplots(1, 2 + bool(train), figsize=(4.2 * (2 + bool(train)), 3.8))
        for ax, (side, y) in zip(axes, (("local", self.LOCAL), ("global", self.GLOBAL))):
            _lines(ax, self.curve, "interp_ratio", self.color, self.splits, "epoch", y)
            marks = _mark(ax, self.ref, self.sel, self.splits, "epoch", y)
            ax.set(xlabel="epoch", ylabel=f"{side} ROUGE-L (mean over clients)", title=f"{side} ROUGE-L by epoch")
        if train:
            axes[2].plot(sorted(train), [np.mean(train[e]) for e in sorted(train)], "-o", ms=3, color="0.3")
            axes[2].set(xlabel="epoch", ylabel="train loss (mean over clients)", title="local training loss")
        for ax in axes:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.suptitle(f"Personalization by epoch: {self.name}{self.note}", fontsize=11)
        fig.tight_layout()
        fig.legend(handles=self.handles + marks, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                   ncol=len(self.handles + marks))
        return _save(fig, self.out / "curves_by_epoch.png")

    def by_ratio(self) -> Path:
        """``interpolation.png``: ROUGE-L against the ratio at the last and the selected epoch."""
        last = max(p["epoch"] for p in self.curve)
        sel = self.sel
        chosen = [last] + ([sel["epoch"]] if sel and sel.get("epoch") not in (None, last) else [])
        fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.8), sharey=True)
        for ax, (side, y) in zip(axes, (("local", self.LOCAL), ("global", self.GLOBAL))):
            labels = {e: f"epoch {e} ({'last' if e == last else 'selected'})" for e in chosen}
            _lines(ax, [p for p in self.curve if p["epoch"] in chosen], "epoch", dict(zip(chosen, ("C0", "C3"))),
                   self.splits, "interp_ratio", y, labels)
            _mark(ax, self.ref, sel, self.splits, "interp_ratio", y)
            ax.set(xlabel="interpolation ratio (0 = global, 1 = local)", title=f"{side} ROUGE-L")
        axes[0].set_ylabel("ROUGE-L (mean over clients)")
        axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
        fig.suptitle(f"Interpolating global and local prompts: {self.name}{self.note}", fontsize=11)
        fig.tight_layout()
        return _save(fig, self.out / "interpolation.png")


def plot_search(search_dir: Path) -> list[Path]:
    """``pareto.png``: local vs global validation ROUGE-L per trial, the Pareto front, reference and selection.

    Args:
        search_dir: directory holding ``results.csv`` and/or ``search.json``.

    Returns:
        ``[search_dir / "pareto.png"]``, or ``[]`` when there is no trial score and no reference.
    """
    search_dir = Path(search_dir)
    meta = _read_json(search_dir / "search.json")
    rows: list[dict[str, str]] = []
    if (search_dir / "results.csv").is_file():
        with open(search_dir / "results.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    split = "test" if rows and not any(_finite(_num(r.get(objective("local_val")))) for r in rows) else "val"
    lx, gy = objective(f"local_{split}"), objective(f"global_{split}")
    pts = [r for r in rows if _finite(_num(r.get(lx))) and _finite(_num(r.get(gy)))]
    ref = meta.get("reference") or {}
    if not pts and not ref:
        return []
    cols = list(rows[0]) if rows else []
    searched = cols[cols.index("status") + 1:cols.index("epoch")] if {"status", "epoch"} <= set(cols) else []
    params = meta.get("params") or searched
    param = params[0] if params else None
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    x, y = np.array([_num(r[lx]) for r in pts]), np.array([_num(r[gy]) for r in pts])
    values = np.array([_num(r.get(param)) if param else None for r in pts], dtype=float)
    dots = {"s": 36, "edgecolors": "0.2", "linewidths": 0.4, "zorder": 3}
    if pts and param and np.isfinite(values).all():
        lo, hi = values.min(), values.max()
        norm = LogNorm(lo, hi) if lo > 0 and hi / lo >= 100 else Normalize(lo, hi)
        fig.colorbar(ax.scatter(x, y, c=values, cmap="viridis", norm=norm, **dots), ax=ax, label=param, pad=0.02)
    else:  # a categorical (or no) parameter: one legend entry per value
        labels = [str(r.get(param, "")) if param else "trial" for r in pts]
        for i, lab in enumerate(sorted(set(labels))):
            idx = [j for j, lb in enumerate(labels) if lb == lab]
            ax.scatter(x[idx], y[idx], color=f"C{i % 10}", label=f"{param} = {lab}" if param else lab, **dots)
    front = sorted((p for p in pts if _flag(p.get("pareto"))), key=lambda p: _num(p[lx]))
    if front:
        ax.step([_num(p[lx]) for p in front], [_num(p[gy]) for p in front], where="pre", color="C3", lw=1.5,
                alpha=0.7, zorder=2, label="Pareto front")
    if _finite(ref.get(lx)) and _finite(ref.get(gy)):
        label = "un-personalized (global prompt)" if meta.get("kind", "personalize") == "personalize" else "reference"
        ax.scatter(ref[lx], ref[gy], **REF_STYLE, facecolors="black", label=label)
    sel = next((p for p in pts if _flag(p.get("selected"))), None) or meta.get("selected")
    if sel and _finite(_num(sel.get(lx))) and _finite(_num(sel.get(gy))):
        desc = ", ".join(f"{k.split('.')[-1]}={_fmt(sel[k])}" for k in params if k in sel)
        ax.scatter(_num(sel[lx]), _num(sel[gy]), **SEL_STYLE, label=f"selected: {desc or sel.get('trial_id', '')}")
    title = f"Search '{meta['name']}'" if meta.get("name") else f"Search {search_dir.name}"
    ax.set(xlabel=f"local {split} ROUGE-L (client's own data, mean)", ylabel=f"global {split} ROUGE-L (mean)",
           title=f"{title} ({meta.get('kind', 'trials')}): {len(pts)} trials")
    ax.margins(0.06)
    # Outside the axes: wherever a trade-off leaves room depends on the search.
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    if meta.get("rule"):
        fig.text(0.5, -0.09, "\n".join(textwrap.wrap(f"selection rule: {meta['rule']}", 95)), ha="center", va="top",
                 fontsize=8, color="0.3")
    return [_save(fig, search_dir / "pareto.png")]


def _lines(ax: Any, curve: list[dict], by: str, colors: dict, splits: list[str], x: str, y: str,
           labels: dict | None = None) -> None:
    """One line per value of ``by`` (val solid, test dashed and faded); ``x``/``y`` are keys with ``{s}``."""
    along = "epoch" if by == "interp_ratio" else "interp_ratio"
    for value, color in colors.items():
        for s in splits:
            kx, ky = x.format(s=s), y.format(s=s)
            pts = sorted((p for p in curve if p[by] == value and _finite(p.get(kx)) and _finite(p.get(ky))),
                         key=lambda p: p[along])
            ax.plot([p[kx] for p in pts], [p[ky] for p in pts], SPLIT_STYLE[s], marker="o", ms=3.5, color=color,
                    alpha=1.0 if s == splits[0] else 0.45, label=f"{labels[value]}, {s}" if labels else None)
            _interval_marks(ax, pts, kx, ky, color, solid=s == splits[0])
    ax.grid(alpha=0.3)


def _interval_marks(ax: Any, pts: list[dict], kx: str, ky: str, color: Any, solid: bool) -> None:
    """The points' 95% intervals, where the files hold them (``{key}_low``/``{key}_high``): a band
    along an epoch or ratio axis; in the local/global plane, error bars on the first split only."""
    def spread(key: str) -> np.ndarray | None:
        if not all(_finite(p.get(f"{key}_low")) and _finite(p.get(f"{key}_high")) for p in pts) or not pts:
            return None
        return np.array([[p[key] - p[f"{key}_low"] for p in pts], [p[f"{key}_high"] - p[key] for p in pts]])

    dy = spread(ky)
    if dy is None:
        return
    if kx in ("epoch", "interp_ratio"):
        ys = np.array([p[ky] for p in pts])
        ax.fill_between([p[kx] for p in pts], ys - dy[0], ys + dy[1], color=color, alpha=0.12 if solid else 0.05,
                        lw=0)
    elif solid and (dx := spread(kx)) is not None:
        ax.errorbar([p[kx] for p in pts], [p[ky] for p in pts], xerr=dx, yerr=dy, fmt="none", ecolor=color,
                    alpha=0.35, lw=0.8)


def _mark(ax: Any, ref: dict, sel: dict | None, splits: list[str], x: str, y: str) -> list[Any]:
    """Mark the reference (star, or a dotted level when x is epoch/ratio) and the selected point (red ring)."""
    handles, kx0, ky0 = [], x.format(s=splits[0]), y.format(s=splits[0])
    for s in splits:
        kx, ky, solid = x.format(s=s), y.format(s=s), s == splits[0]
        if kx in ("epoch", "interp_ratio") and _finite(ref.get(ky)):
            handles.append(ax.axhline(ref[ky], color="black" if solid else "0.5", ls=":", lw=1.2,
                                      label=f"un-personalized ({s})"))
        elif _finite(ref.get(kx)) and _finite(ref.get(ky)):
            handles.append(ax.scatter(ref[kx], ref[ky], **REF_STYLE, facecolors="black" if solid else "none",
                                      label=f"un-personalized ({s})"))
    if sel and _finite(sel.get(kx0)) and _finite(sel.get(ky0)):
        label = f"selected (epoch {sel.get('epoch')}, ratio {_fmt(sel.get('interp_ratio'))})"
        handles.append(ax.scatter(sel[kx0], sel[ky0], **SEL_STYLE, label=label))
    return handles


def _curve_from_records(records: list[dict]) -> list[dict]:
    """Client means per (epoch, ratio) under summary.json's flat keys, for a study without a summary."""
    groups: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for rec in records:
        for m in METRICS if rec.get("split") in SPLITS and _finite(rec.get("interp_ratio")) else ():
            if _finite(rec.get(m)):
                groups[(rec["epoch"], rec["interp_ratio"])][f"{rec['split']}/{m}_mean"].append(rec[m])
    return [{"epoch": e, "interp_ratio": r, **{k: float(np.mean(v)) for k, v in g.items()}}
            for (e, r), g in sorted(groups.items())]


def _is_personalization(path: Path) -> bool:
    return (path / "personalization.jsonl").is_file() or "curve" in _read_json(path / "summary.json")


def _series(rows: list[dict], *keys: str) -> tuple[np.ndarray, ...]:
    """``round`` and each key's values, over the rows where every key holds a finite number."""
    kept = [r for r in rows if all(_finite(r.get(k)) for k in keys)]
    return tuple(np.array([r.get(k, 0) for r in kept], dtype=float) for k in ("round", *keys))


def _read_jsonl(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # blank or torn last line of a crashed run
            continue
    return [o for o in out if isinstance(o, dict)]


def _num(value: Any) -> float | None:
    """A CSV cell as a number: plain, or a one-element JSON list such as ``[0.5]``."""
    try:
        return float(value)
    except (TypeError, ValueError):
        try:
            parsed = json.loads(value)
        except (TypeError, ValueError):
            return None
        return float(parsed[0]) if isinstance(parsed, list) and len(parsed) == 1 and _finite(parsed[0]) else None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fmt(value: Any) -> str:
    return f"{_num(value):.3g}" if _finite(_num(value)) else str(value)


def _flag(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "1.0", "true")


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path
