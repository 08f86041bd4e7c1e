"""What a soft prompt learned, in words: each virtual token's nearest vocabulary tokens, and how
far a personalized prompt moved from the global one, virtual token by virtual token.

The nearest tokens are by cosine similarity to the backbone's input embeddings (the table the
prompt lives beside). A trained virtual token rarely sits on a vocabulary token: its cosines say
how close it is, and a low best cosine means the neighbours are a weak reading of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nearest_tokens(table: torch.Tensor, prompt: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [virtual, k], cosines [virtual, k])``: for each row of ``prompt`` the ``k`` rows of
    the embedding ``table`` with the highest cosine similarity, best first."""
    sims = F.normalize(prompt.float(), dim=-1) @ F.normalize(table.float(), dim=-1).T
    cosines, ids = sims.topk(min(k, table.shape[0]), dim=-1)
    return ids, cosines


def drift(global_prompt: torch.Tensor, local_prompt: torch.Tensor) -> torch.Tensor:
    """``[virtual]``: each virtual token's L2 distance from the global prompt's, over the global
    prompt's mean row norm (0: unmoved; 1: moved by a typical row's length)."""
    scale = global_prompt.float().norm(dim=-1).mean().clamp(min=1e-12)
    return (local_prompt.float() - global_prompt.float()).norm(dim=-1) / scale
