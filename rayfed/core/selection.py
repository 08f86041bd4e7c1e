"""Choosing among personalization settings: the Pareto set and stated selection rules.

All read validation scores only; test scores ride along in the rows and are reported, never
used to choose. :func:`select_reliable` reads the rows' 95% intervals (paired with the
un-personalized prompt): a setting replaces the global prompt only where the gain is beyond
the noise; otherwise the global prompt is kept, and the choice says why.
"""

from __future__ import annotations

import math
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


def curve_name(split: str, stat: str) -> str:
    """A curve row's name for a ROUGE-L statistic: ``local_val/rouge_l_change_low``."""
    return metric_key(split, "rouge_l", stat)


def reliable_rule_text(tolerance: float, name: Callable[[str, str], str] = curve_name) -> str:
    return (f"max {name('local_val', 'mean')} among the settings whose local gain is reliably positive "
            f"({name('local_val', 'change_low')} > 0) and whose global change stays within the tolerance "
            f"({name('global_val', 'change_low')} >= -{tolerance:g}), 95% intervals paired with the un-personalized "
            f"prompt; none: keep the global prompt")


def select_reliable(rows: Sequence[dict[str, Any]], tolerance: float,
                    name: Callable[[str, str], str] = curve_name) -> dict[str, Any] | None:
    """The row with the best local validation score among those whose local gain over the
    un-personalized prompt is reliably positive (the lower end of its 95% interval above 0) and
    whose global change is reliably within ``tolerance`` (its lower end at least ``-tolerance``);
    ties: the better global score, then the earlier row. When none is: the global prompt itself
    (a curve's epoch-0 row at ratio 0, if the rows have one) with ``kept_global_prompt`` and the
    ``reason``. None when the rows lack validation scores or their intervals. ``name(split, stat)``
    names the columns (a curve row's by default; a search's flat ones in rayfed.tuning)."""
    local, glob = name("local_val", "mean"), name("global_val", "mean")
    gain, gain_low = name("local_val", "change"), name("local_val", "change_low")
    global_low = name("global_val", "change_low")
    if not rows or not all(key in r for r in rows for key in (local, glob, gain, gain_low, global_low)):
        return None
    rule = reliable_rule_text(tolerance, name)
    eligible = [(i, r) for i, r in enumerate(rows) if r[gain_low] > 0 and r[global_low] >= -tolerance]
    if eligible:
        _, best = max(eligible, key=lambda ir: (ir[1][local], ir[1][glob], -ir[0]))
        return {**best, "rule": rule, "kept_global_prompt": False}
    # The closest personalized setting (a curve's epoch-0 or ratio-0 rows are the global prompt
    # itself, whose gain is 0 on every draw and would otherwise win whenever every gain may be noise).
    personalized = [r for r in rows if "interp_ratio" not in r or (r["epoch"] != 0 and r["interp_ratio"] != 0)]
    closest = max(personalized or rows, key=lambda r: r[gain_low])
    where = (f"epoch {closest['epoch']}, ratio {closest['interp_ratio']:g}" if "interp_ratio" in closest
             else f"trial {closest.get('trial_id')}")
    reason = (f"no setting's local gain is reliably positive with its global change within {tolerance:g}; the "
              f"surest local gain was {where}: {closest[gain]:+.4f} [{closest[gain_low]:+.4f}, "
              f"{closest.get(name('local_val', 'change_high'), math.nan):+.4f}], global change lower end "
              f"{closest[global_low]:+.4f}")
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
