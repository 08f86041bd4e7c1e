"""The l2 pull toward a reference prompt (the global one during personalization)."""

from __future__ import annotations

import torch


def l2_penalty(prompt: torch.Tensor, reference: torch.Tensor, strength: float) -> torch.Tensor:
    """``strength / 2 * ||prompt - reference||^2``; its gradient is ``strength * (prompt - reference)``."""
    return 0.5 * strength * (prompt - reference).pow(2).sum()
