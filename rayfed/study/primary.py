"""The pre-registered primary comparisons (``verdicts:`` in the study file), and the shown ones
(``comparisons:``), measured from the per-example score files and decided with
rayfed.core.verdicts.

A comparison's points are personalization scores (a job, an epoch, an interpolation ratio) of
one algorithm's run, per seed, or a Ditto run's clients' own prompts at a round (``@ditto``).
Every point of a comparison is scored on the same clients and examples, so the bootstrap
(rayfed.core.bootstrap.paired_replicates) resamples seeds, clients and examples once for all of
them, and the statistic is computed on each replicate:

- ``difference``: the mean of ``a``'s points minus the mean of ``b``'s on one split (with
  ``from_start``, each point minus its own personalization's epoch-0 point: a change).
- ``frontier``: how far ``a``'s points lie above ``b``'s local/global frontier, mean over ``a``'s
  points: ``global(a) - f(local(a))``, where ``f`` interpolates linearly between ``b``'s Pareto
  points (sorted by local score) and is held flat beyond them, so a point beyond ``b``'s reach is
  compared with ``b``'s nearest end (conservative for ``a``). With ``from_start`` both
  coordinates are changes from each curve's own epoch 0.

ROUGE-L decides; the loss (as -loss, so that higher is better for both) is shown beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rayfed.core.bootstrap import Split, paired_replicates
from rayfed.core.power import Components, components
from rayfed.core.selection import pareto_mask
from rayfed.core.verdicts import claim_verdict, decide
from rayfed.errors import UserError
from rayfed.outputs.scores import DITTO_SCORES, EXAMPLE_SCORES, load_example_scores
from rayfed.study.config import DITTO_POINTS, ComparisonConfig, PointsConfig, StudyConfig
from rayfed.study.layout import run_dir

Point = tuple[str, str, int, float]  # algorithm, job, epoch, ratio
METRICS = ("rouge_l", "loss")


def points_of(s: StudyConfig, pts: PointsConfig) -> list[Point]:
    label = pts.algorithm or s.personalize.main_algorithm
    return [(label, job, epoch, ratio) for job in pts.jobs for epoch in pts.epochs for ratio in pts.ratios]


def start_of(point: Point) -> Point:
    return point[0], point[1], 0, point[3]


def comparison_points(s: StudyConfig, c: ComparisonConfig) -> tuple[list[Point], list[int], list[int], list[int]]:
    """Every point the comparison reads, and the indices of ``a``'s, ``b``'s and (``from_start``)
    each of those points' epoch-0 point, ``a`` then ``b``."""
    a, b = points_of(s, c.a), points_of(s, c.b)
    starts = [start_of(p) for p in a + b] if c.from_start else []
    points = list(dict.fromkeys(a + b + starts))
    index = {p: i for i, p in enumerate(points)}
    return points, [index[p] for p in a], [index[p] for p in b], [index[p] for p in starts]


def load_splits(s: StudyConfig, out: Path, conc: float, seeds: list[int], lrs: dict[str, float],
                points: list[Point], splits: list[str], metric: str) -> dict[str, Split]:
    """Each split's ``Split`` of ``points`` (``-loss`` for the loss), aligned by client and
    example id, on the examples every point was scored on (a Ditto client's own prompt is scored
    on the whole global sets, a personalization on each client's share of them)."""
    files: dict[tuple[int, str, str], dict[str, np.ndarray]] = {}
    result = {}
    for split in splits:
        per_seed = []
        for seed in seeds:
            tables = []
            for label, job, epoch, ratio in points:
                key = (seed, label, job)
                if key not in files:
                    run = run_dir(out, label, conc, lrs[label], seed)
                    path = run / DITTO_SCORES if job == DITTO_POINTS else run / "personalize" / job / EXAMPLE_SCORES
                    if not path.is_file():
                        raise UserError(f"{path} is missing: the comparisons need every compared point's "
                                        f"per-example scores (rerun the study to score them)")
                    files[key] = load_example_scores(path)
                tables.append(_table(files[key], split, epoch, ratio, metric))
            per_seed.append(_aligned(tables, f"{split} at concentration {conc:g}, seed {seed}"))
        width = max(v.shape[-1] for v, _ in per_seed)
        clients = max(v.shape[1] for v, _ in per_seed)
        values = np.zeros((len(points), len(seeds), clients, width))
        sizes = np.zeros((len(seeds), clients), dtype=np.int64)
        for i, (v, n) in enumerate(per_seed):
            values[:, i, :v.shape[1], :v.shape[2]] = v
            sizes[i, :len(n)] = n
        result[split] = Split(values, sizes)
    return result


def _table(cols: dict[str, np.ndarray], split: str, epoch: int, ratio: float, metric: str,
           ) -> dict[tuple[int, int], float]:
    at = (cols["split"] == split) & (cols["epoch"] == epoch)
    if epoch == 0 and not (at & np.isclose(cols["interp_ratio"], ratio)).any():
        ratio = float(cols["interp_ratio"][at][0]) if at.any() else ratio  # every ratio of epoch 0 is the global prompt
    at &= np.isclose(cols["interp_ratio"], ratio)
    sign = -1.0 if metric == "loss" else 1.0
    return {(int(c), int(e)): sign * float(v)
            for c, e, v in zip(cols["client_id"][at], cols["example_id"][at], cols[metric][at], strict=True)}


def _aligned(tables: list[dict[tuple[int, int], float]], where: str) -> tuple[np.ndarray, list[int]]:
    """The points' values on the (client, example) keys of the point scored on fewest, which every
    other point must also hold."""
    keys = sorted(min(tables, key=len))
    if not keys or any(not set(keys) <= set(t) for t in tables):
        raise UserError(f"{where}: the compared points were not scored on the same examples")
    clients = sorted({c for c, _ in keys})
    by_client = [[k for k in keys if k[0] == c] for c in clients]
    width = max(len(k) for k in by_client)
    values = np.zeros((len(tables), len(clients), width))
    for j, ks in enumerate(by_client):
        for i, t in enumerate(tables):
            values[i, j, :len(ks)] = [t[k] for k in ks]
    return values, [len(k) for k in by_client]


def statistic(c: ComparisonConfig, means: dict[str, np.ndarray], a: list[int], b: list[int],
              starts: list[int]) -> np.ndarray:
    """The comparison's statistic for every row of ``means`` (``[rows, points]`` per split).

    The means are rounded to 9 decimals first: two points whose means are equal (tied examples)
    differ by 1e-17 in the order of a float sum, which differs between CPUs, and the frontier's
    Pareto test and interpolation would break that tie one way on one machine and the other way
    on another. 1e-9 is far above that noise (a value lands on the other side of a rounding
    boundary with odds of about 1e-7) and far below any difference of scores over a few hundred
    examples."""
    means = {split: np.round(m, 9) for split, m in means.items()}

    def level(split: str, idx: list[int], offset: int) -> np.ndarray:
        m = means[split][:, idx]
        return m - means[split][:, starts[offset:offset + len(idx)]] if starts else m

    if c.kind == "difference":
        return level(c.split, a, 0).mean(axis=1) - level(c.split, b, len(a)).mean(axis=1)
    la, ga = level("local_test", a, 0), level("global_test", a, 0)
    lb, gb = level("local_test", b, len(a)), level("global_test", b, len(a))
    return np.array([frontier_gap(la[r], ga[r], lb[r], gb[r]) for r in range(la.shape[0])])


def frontier_gap(la: np.ndarray, ga: np.ndarray, lb: np.ndarray, gb: np.ndarray) -> float:
    """Mean over ``a``'s points of their global score minus ``b``'s frontier at their local score."""
    keep = pareto_mask(list(zip(lb.tolist(), gb.tolist(), strict=True)))
    front = sorted({(x, y) for x, y, k in zip(lb, gb, keep, strict=True) if k})
    xs, ys = np.array([x for x, _ in front]), np.array([y for _, y in front])
    return float(np.mean(ga - np.interp(la, xs, ys)))


def measure(s: StudyConfig, out: Path, conc: float, seeds: list[int], lrs: dict[str, float],
            c: ComparisonConfig, metric: str, draws: int) -> tuple[float, np.ndarray, dict]:
    """``(estimate, replicates, design)`` of one comparison at one concentration."""
    points, a, b, starts = comparison_points(s, c)
    splits = [c.split] if c.kind == "difference" else ["local_test", "global_test"]
    data = load_splits(s, out, conc, seeds, lrs, points, splits, metric)
    estimate = float(statistic(c, {k: v.means()[None] for k, v in data.items()}, a, b, starts)[0])
    replicates = statistic(c, paired_replicates(data, draws=draws, seed=0), a, b, starts)
    first = data[splits[-1]]
    design = {"seeds": len(seeds), "clients": float((first.sizes > 0).sum(axis=1).mean()),
              "examples": {k: float(v.sizes[v.sizes > 0].mean()) for k, v in data.items()}}
    return estimate, replicates, design


def unit_differences(s: StudyConfig, out: Path, conc: float, seeds: list[int], lrs: dict[str, float],
                     c: ComparisonConfig) -> Components:
    """Variance components (rayfed.core.power) of the comparison's per-example difference on its
    global split; a frontier comparison by the difference of ``a``'s and ``b``'s mean global
    scores, a linear stand-in that ignores the local split's noise."""
    points, a, b, starts = comparison_points(s, c)
    split = c.split if c.kind == "difference" else "global_test"
    data = load_splits(s, out, conc, seeds, lrs, points, [split], "rouge_l")[split]
    both = data.values[a + b] - (data.values[starts] if starts else 0.0)
    diff = both[:len(a)].mean(axis=0) - both[len(a):].mean(axis=0)  # [seeds, clients, examples]
    groups = [[diff[i, j, :n] for j, n in enumerate(row) if n > 0] for i, row in enumerate(data.sizes)]
    return components(groups)


def primary_verdicts(s: StudyConfig, out: Path, seeds: dict[str, list[int]], lrs: dict[str, dict[str, float]],
                     ) -> dict[str, Any]:
    """Every primary comparison at every concentration with finished seeds: its estimate and 95%
    interval on ROUGE-L and on -loss, and, at the primary concentrations, the Holm-corrected
    verdict; then each claim's verdict."""
    v = s.verdicts
    primary_levels = [f"{c:g}" for c in (v.concentrations or s.concentrations)]
    rows = [row for claim, comparisons in v.claims.items() for c in comparisons
            for row in _measured(s, out, seeds, lrs, c, claim, primary_levels)]
    family = [r for r in rows if r["primary"]]
    decisions = decide([r["rouge_l"]["estimate"] for r in family], [r["rouge_l"]["replicates"] for r in family],
                       [r["direction"] for r in family], [r["margin"] for r in family], v.alpha)
    for r, d in zip(family, decisions, strict=True):
        r["rouge_l"] = d.as_dict()
    _intervals(rows)
    claims = {claim: claim_verdict([r["rouge_l"]["verdict"] for r in family if r["claim"] == claim])
              for claim in v.claims}
    return {"alpha": v.alpha, "family_size": len(family), "primary_concentrations": primary_levels,
            "comparisons": rows, "claims": claims}


INTERIM = "interim"


def withhold_verdicts(primary: dict[str, Any]) -> None:
    """An unfinished study's primary comparisons keep their estimates, intervals and Holm
    p-values and lose their verdicts (each one, and each claim's, becomes ``interim``): the
    rule's family-wise 5% holds for one look at the finished study, and deciding at every look
    of a study that is still running would spend it again at each."""
    for r in primary["comparisons"]:
        if r["primary"]:
            r["rouge_l"]["verdict"] = INTERIM
    primary["claims"] = dict.fromkeys(primary["claims"], INTERIM)


def shown_comparisons(s: StudyConfig, out: Path, seeds: dict[str, list[int]], lrs: dict[str, dict[str, float]],
                      ) -> list[dict[str, Any]]:
    """The study's ``comparisons:`` at every concentration with finished seeds: estimates and 95%
    intervals on ROUGE-L and -loss, outside the claims' Holm family and never voted."""
    rows = [row for c in s.comparisons for row in _measured(s, out, seeds, lrs, c, "shown", [])]
    _intervals(rows)
    return rows


def _measured(s: StudyConfig, out: Path, seeds: dict[str, list[int]], lrs: dict[str, dict[str, float]],
              c: ComparisonConfig, claim: str, primary_levels: list[str]) -> list[dict[str, Any]]:
    """One comparison at every concentration with finished seeds whose compared algorithms have
    selected lrs: estimates and bootstrap replicates."""
    rows = []
    for conc in s.concentrations:
        key = f"{conc:g}"
        if not seeds.get(key):
            continue
        row = {"claim": claim, "name": c.name, "concentration": key, "primary": key in primary_levels,
               "direction": c.direction, "margin": c.margin, "effect": c.effect, "kind": c.kind}
        for metric in METRICS:
            est, reps, design = measure(s, out, conc, seeds[key], lrs[key], c, metric, s.verdicts.draws)
            row[metric] = {"estimate": est, "replicates": reps}
        row["design"] = design
        rows.append(row)
    return rows


def _intervals(rows: list[dict[str, Any]]) -> None:
    """Replace each row's bootstrap replicates by their 95% percentile interval."""
    for r in rows:
        for metric in METRICS:
            if "replicates" in r[metric]:
                reps = r[metric].pop("replicates")
                low, high = np.percentile(reps, [2.5, 97.5])
                r[metric].update(low=float(low), high=float(high))
