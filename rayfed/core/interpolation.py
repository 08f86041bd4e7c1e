"""Global/local prompt interpolation: no training, one line of arithmetic."""

from __future__ import annotations

import torch


def interpolate(global_prompt: torch.Tensor, local_prompt: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(1 - alpha) * global + alpha * local``: alpha 0 is the global prompt, 1 the local one."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return (1.0 - alpha) * global_prompt + alpha * local_prompt
