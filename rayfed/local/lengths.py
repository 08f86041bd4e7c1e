"""Rows of similar length in one forward pass: the fewest padded tokens for the calls made.

A forward pass pads every row to the widest one. Rows sorted by length and cut into contiguous
groups waste little padding, but each group is one more call. :func:`length_groups` finds the
cut that minimises padded tokens plus a per-call cost, exactly. Evaluation uses it for its
teacher-forced passes, and batched training (``runtime.batch_clients``) for the rows of many
clients that share one step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def call_overhead_tokens(device: torch.device) -> int:
    """What one more forward call costs, in padded tokens' worth of compute.

    On a CPU a call costs about as much as 50 tokens of SmolLM2-135M, so splitting a batch where
    lengths jump pays; on an accelerator small batches are launch-bound and padding nearly free.
    """
    return 48 if device.type == "cpu" else 4096


def length_groups(widths: Sequence[Sequence[int]], max_rows: int, overhead: int) -> list[tuple[int, int]]:
    """Split sorted rows into contiguous ``[start, stop)`` groups of at most ``max_rows`` rows.

    Args:
        widths: Each row's length along each padded axis, rows in sorted order. A group is as wide
            as the sum over axes of its rows' longest (one axis for right-padded training rows;
            source and target for evaluation's ``[left-padded source | right-padded target]``).
        max_rows: Rows per group at most.
        overhead: Cost of one more group, in padded tokens (:func:`call_overhead_tokens`).

    Returns:
        The groups minimising ``sum(rows * width) + overhead * groups`` (an exact dynamic
        programme over at most ``max_rows`` starts per row).
    """
    n = len(widths)
    best = [0.0] + [math.inf] * n
    cut = [0] * (n + 1)
    for stop in range(1, n + 1):
        longest = [0] * len(widths[stop - 1])
        for start in range(stop - 1, max(stop - max_rows, 0) - 1, -1):
            longest = [max(a, b) for a, b in zip(longest, widths[start])]
            cost = best[start] + overhead + (stop - start) * sum(longest)
            if cost < best[stop]:
                best[stop], cut[stop] = cost, start
    groups, stop = [], n
    while stop > 0:
        groups.append((cut[stop], stop))
        stop = cut[stop]
    return groups[::-1]
