"""Weighted aggregation of client updates: a plain function on tensors."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rayfed.types import ClientUpdate


def weighted_mean(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """``sum_i w_i t_i / sum_i w_i``, accumulated in float64 for order-robust sums."""
    if len(tensors) == 0 or len(tensors) != len(weights):
        raise ValueError("need one weight per tensor and at least one tensor")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights must sum to a positive number")
    acc = torch.zeros_like(tensors[0], dtype=torch.float64)
    for t, w in zip(tensors, weights):
        acc += t.to(torch.float64) * (float(w) / total)
    return acc.to(tensors[0].dtype)


def aggregate_updates(updates: Sequence[ClientUpdate]) -> torch.Tensor:
    """Example-weighted mean of the clients' deltas, in client-id order (scheduling-independent)."""
    ordered = sorted(updates, key=lambda u: u.client_id)
    return weighted_mean([u.delta for u in ordered], [u.num_examples for u in ordered])
