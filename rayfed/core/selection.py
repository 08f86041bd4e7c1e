"""Choosing among personalization settings: the Pareto set and a stated selection rule.

Both read validation scores only; test scores ride along in the rows and are reported, never
used to choose.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def pareto_mask(points: Sequence[tuple[float, float]]) -> list[bool]:
    """True for the points no other point dominates (both coordinates maximized): another point
    dominates if it is at least as good in both and better in one."""
    return [not any(a >= x and b >= y and (a > x or b > y) for a, b in points) for x, y in points]
