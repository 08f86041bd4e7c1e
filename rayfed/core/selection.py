"""Choosing among personalization settings: the Pareto set and stated selection rules.

All read validation scores only; test scores ride along in the rows and are reported, never
used to choose. :func:`select_reliable` reads the rows' 95% intervals (paired with the
un-personalized prompt): a setting replaces the global prompt only where the gain is beyond
the noise; otherwise the global prompt is kept, and the choice says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rayfed.names import metric_key

LOCAL_VAL = metric_key("local_val", "rouge_l", "mean")
GLOBAL_VAL = metric_key("global_val", "rouge_l", "mean")
LOCAL_GAIN_LOW = metric_key("local_val", "rouge_l", "change_low")  # lower end of the paired 95% interval
GLOBAL_CHANGE_LOW = metric_key("global_val", "rouge_l", "change_low")


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


def reliable_rule_text(tolerance: float) -> str:
    return (f"max {LOCAL_VAL} among the settings whose local gain is reliably positive ({LOCAL_GAIN_LOW} > 0) and "
            f"whose global change stays within the tolerance ({GLOBAL_CHANGE_LOW} >= -{tolerance:g}), 95% intervals "
            f"paired with the un-personalized prompt; none: keep the global prompt")


def select_reliable(rows: Sequence[dict[str, Any]], tolerance: float) -> dict[str, Any] | None:
    """The curve row with the best local validation score among those whose local gain over the
    un-personalized prompt is reliably positive (the lower end of its 95% interval above 0) and
    whose global change is reliably within ``tolerance`` (its lower end at least ``-tolerance``);
    ties: the better global score, then the earlier row. When none is, the global prompt itself
    (epoch 0, ratio 0) with ``kept_global_prompt`` and the ``reason``. None when the rows lack
    validation scores or their intervals."""
    needed = (LOCAL_VAL, GLOBAL_VAL, LOCAL_GAIN_LOW, GLOBAL_CHANGE_LOW)
    if not rows or not all(key in r for r in rows for key in needed):
        return None
    rule = reliable_rule_text(tolerance)
    eligible = [(i, r) for i, r in enumerate(rows) if r[LOCAL_GAIN_LOW] > 0 and r[GLOBAL_CHANGE_LOW] >= -tolerance]
    if eligible:
        _, best = max(eligible, key=lambda ir: (ir[1][LOCAL_VAL], ir[1][GLOBAL_VAL], -ir[0]))
        return {**best, "rule": rule, "kept_global_prompt": False}
    start = next(r for r in rows if r.get("epoch") == 0)  # every epoch-0 row is the global prompt
    closest = max(rows, key=lambda r: r[LOCAL_GAIN_LOW])
    gain = metric_key("local_val", "rouge_l", "change")
    reason = (f"no setting's local gain is reliably positive with its global change within {tolerance:g}; the "
              f"surest local gain was epoch {closest.get('epoch')}, ratio {closest.get('interp_ratio'):g}: "
              f"{closest[gain]:+.4f} [{closest[LOCAL_GAIN_LOW]:+.4f}, {closest[gain + '_high']:+.4f}], global change "
              f"lower end {closest[GLOBAL_CHANGE_LOW]:+.4f}")
    return {**start, "interp_ratio": 0.0, "rule": rule, "kept_global_prompt": True, "reason": reason}


def pareto_mask(points: Sequence[tuple[float, float]]) -> list[bool]:
    """True for the points no other point dominates (both coordinates maximized): another point
    dominates if it is at least as good in both and better in one."""
    return [not any(a >= x and b >= y and (a > x or b > y) for a, b in points) for x, y in points]
