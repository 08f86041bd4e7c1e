"""Compressing a client's update before it is sent to the server (``communication.compress``).

- ``none``: float32 values, 4 bytes each.
- ``fp16``: each value rounded to float16, 2 bytes each.
- ``int8``: symmetric per-tensor quantization, ``round(x / s)`` with ``s = max|x| / 127``: one byte
  per value plus the float32 scale.
- ``topk``: the ``topk_fraction`` largest-magnitude values with their int32 positions (8 bytes
  each), with error feedback: what a round leaves out is added to the client's next update
  (Stich et al. 2018; Karimireddy et al. 2019), so nothing is lost, only delayed.

Each function returns what the server decodes and the bytes on the wire; deterministic (no
random rounding), so a seeded run repeats bit for bit.
"""

from __future__ import annotations

import math

import torch

METHODS = ("none", "fp16", "int8", "topk")


def compress(update: torch.Tensor, method: str, *, residual: torch.Tensor | None = None,
             topk_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """``(decoded update, the client's new residual, bytes sent)``. ``residual`` (``topk`` only)
    is what earlier rounds left out; other methods keep none (None)."""
    values = update.detach().float()
    if method == "none":
        return values, None, values.numel() * 4
    if method == "fp16":
        return values.half().float(), None, values.numel() * 2
    if method == "int8":
        scale = float(values.abs().max()) / 127.0
        if scale == 0.0:
            return torch.zeros_like(values), None, values.numel() + 4
        return (values / scale).round().clamp(-127, 127) * scale, None, values.numel() + 4
    if method == "topk":
        carried = values if residual is None else values + residual
        k = max(1, math.ceil(topk_fraction * carried.numel()))
        flat = carried.reshape(-1)
        keep = flat.abs().topk(k, sorted=False).indices
        decoded = torch.zeros_like(flat)
        decoded[keep] = flat[keep]
        decoded = decoded.reshape(carried.shape)
        return decoded, carried - decoded, k * 8
    raise ValueError(f"unknown compression {method!r}; one of {', '.join(METHODS)}")
