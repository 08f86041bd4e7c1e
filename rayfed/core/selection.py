"""Choosing among personalization settings: the Pareto set and stated selection rules.

All read validation scores only; test scores ride along in the rows and are reported, never
used to choose. :func:`select_reliable` reads the rows' 95% intervals (paired with the
un-personalized prompt): a setting replaces the global prompt only where the gain is beyond
the noise; otherwise the global prompt is kept, and the choice says why.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rayfed.names import metric_key

LOCAL_VAL = metric_key("local_val", "rouge_l", "mean")
GLOBAL_VAL = metric_key("global_val", "rouge_l", "mean")


def rule_text(tolerance: float, local_key: str = LOCAL_VAL, global_key: str = GLOBAL_VAL) -> str:
    return f"max {local_key} subject to {global_key} >= un-personalized - {tolerance:g}"


def select_best(rows: Sequence[dict[str, Any]], reference: dict[str, float], tolerance: float,
                local_key: str = LOCAL_VAL, global_key: str = GLOBAL_VAL) -> dict[str, Any] | None:
    """The row with the best local score whose global score stays within ``tolerance`` of the
    un-personalized prompt's (ties: the better global score, then the earlier row). None when the
    rows or the reference lack validation scores."""
    if global_key not in reference or not all(local_key in r and global_key in r for r in rows):
        return None
    floor = reference[global_key] - tolerance
    eligible = [(i, r) for i, r in enumerate(rows) if r[global_key] >= floor - 1e-12]
    if not eligible:
        return None
    _, best = max(eligible, key=lambda ir: (ir[1][local_key], ir[1][global_key], -ir[0]))
    return {**best, "rule": rule_text(tolerance, local_key, global_key)}


# Metrics where a lower score is the better one; every other (ROUGE-L, exact match) is higher-better.
LOWER_IS_BETTER = frozenset({"loss"})
SELECTION_METRICS = ("rouge_l", "loss")  # what personalize.metric may name


def curve_name(split: str, stat: str, metric: str = "rouge_l") -> str:
    """A curve row's name for a statistic of ``metric``: ``local_val/rouge_l_change_low``."""
    return metric_key(split, metric, stat)


def _names(name: Callable[..., str] | None, metric: str) -> Callable[[str, str], str]:
    return (lambda split, stat: curve_name(split, stat, metric)) if name is None else name


def reliable_rule_text(tolerance: float, name: Callable[..., str] | None = None, metric: str = "rouge_l") -> str:
    n = _names(name, metric)
    if metric in LOWER_IS_BETTER:
        return (f"min {n('local_val', 'mean')} among the settings whose local {metric} falls reliably "
                f"({n('local_val', 'change_high')} < 0) and whose global {metric} rises by at most the tolerance "
                f"({n('global_val', 'change_high')} <= {tolerance:g}), 95% intervals paired with the "
                f"un-personalized prompt; none: keep the global prompt")
    return (f"max {n('local_val', 'mean')} among the settings whose local gain is reliably positive "
            f"({n('local_val', 'change_low')} > 0) and whose global change stays within the tolerance "
            f"({n('global_val', 'change_low')} >= -{tolerance:g}), 95% intervals paired with the un-personalized "
            f"prompt; none: keep the global prompt")


def select_reliable(rows: Sequence[dict[str, Any]], tolerance: float, name: Callable[[str, str], str] | None = None,
                    metric: str = "rouge_l") -> dict[str, Any] | None:
    """The row with the best local validation ``metric`` among those whose local improvement over
    the un-personalized prompt is reliably positive (its 95% interval wholly on the better side of
    0: above for ROUGE-L, below for the loss) and whose global change is reliably within
    ``tolerance`` (no worse than ``tolerance`` at the interval's worse end), in the metric's units;
    ties: the better global score, then the earlier row. When none is: the global prompt itself
    (a curve's epoch-0 row at ratio 0, if the rows have one) with ``kept_global_prompt`` and the
    ``reason``. None when the rows lack validation scores or their intervals. ``name(split, stat)``
    names the columns (a curve row's ``{split}/{metric}_{stat}`` by default; a search's flat ones in
    rayfed.tuning)."""
    n = _names(name, metric)
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    keys = [n(split, stat) for split in ("local_val", "global_val")
            for stat in ("mean", "change", "change_low", "change_high")]
    if not rows or not all(key in r for r in rows for key in keys):
        return None

    def better(r: dict[str, Any], split: str) -> tuple[float, float, float]:
        """The improvement over the un-personalized prompt and its interval, higher-better for every metric."""
        change, low, high = (r[n(split, stat)] for stat in ("change", "change_low", "change_high"))
        return (change, low, high) if sign > 0 else (-change, -high, -low)

    rule = reliable_rule_text(tolerance, name, metric)
    eligible = [(i, r) for i, r in enumerate(rows) if better(r, "local_val")[1] > 0
                and better(r, "global_val")[1] >= -tolerance - 1e-12]
    if eligible:
        _, best = max(eligible, key=lambda ir: (sign * ir[1][n("local_val", "mean")],
                                                sign * ir[1][n("global_val", "mean")], -ir[0]))
        return {**best, "rule": rule, "kept_global_prompt": False}
    # The closest personalized setting (a curve's epoch-0 or ratio-0 rows are the global prompt
    # itself, whose change is 0 on every draw and would otherwise win whenever every change may be noise).
    personalized = [r for r in rows if "interp_ratio" not in r or (r["epoch"] != 0 and r["interp_ratio"] != 0)]
    closest = max(personalized or rows, key=lambda r: better(r, "local_val")[1])
    where = (f"epoch {closest['epoch']}, ratio {closest['interp_ratio']:g}" if "interp_ratio" in closest
             else f"trial {closest.get('trial_id')}")
    change, low, high = (closest[n("local_val", stat)] for stat in ("change", "change_low", "change_high"))
    worst = closest[n("global_val", "change_high" if sign < 0 else "change_low")]
    shown = {"rouge_l": "ROUGE-L"}.get(metric, metric)
    reason = (f"no setting's local {shown} {'falls' if sign < 0 else 'rises'} reliably with its global change within "
              f"{tolerance:g}; the surest local change was {where}: {change:+.4f} [{low:+.4f}, {high:+.4f}], "
              f"global change {'upper' if sign < 0 else 'lower'} end {worst:+.4f}")
    start = next((r for r in rows if r.get("epoch") == 0), None)  # every epoch-0 row is the global prompt
    kept = {**start, "interp_ratio": 0.0} if start is not None else {}
    return {**kept, "rule": rule, "kept_global_prompt": True, "reason": reason}


def pareto_mask(points: Sequence[tuple[float, float]]) -> list[bool]:
    """True for the points no other point dominates (both coordinates maximized): another point
    dominates if it is at least as good in both and better in one."""
    return [not any(a >= x and b >= y and (a > x or b > y) for a, b in points) for x, y in points]


def reliable_pareto_mask(intervals: Sequence[tuple[float, float, float, float]]) -> list[bool]:
    """True for the settings no other setting reliably dominates. ``intervals[i]`` is setting
    ``i``'s ``(local_low, local_high, global_low, global_high)``: 95% intervals of its changes
    from the same un-personalized prompt. Another setting dominates reliably when its interval
    lies wholly above this one's on both scores; overlapping intervals cannot tell two settings
    apart, so both stay. Conservative (non-overlap is stricter than a paired test), and always
    a superset of the Pareto set of the means."""
    return [not any(o[0] > t[1] and o[2] > t[3] for o in intervals) for t in intervals]
