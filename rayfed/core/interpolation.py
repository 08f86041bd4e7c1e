"""Global/local prompt interpolation: no training, one line of arithmetic."""

from __future__ import annotations

import torch


def interpolate(global_prompt: torch.Tensor, local_prompt: torch.Tensor, ratio: float) -> torch.Tensor:
    """``(1 - ratio) * global + ratio * local``: ratio 0 is the global prompt, 1 the local one."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"interpolation ratio must be in [0, 1], got {ratio}")
    return (1.0 - ratio) * global_prompt + ratio * local_prompt
