"""The interface every federated algorithm implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from rayfed.data.formatting import TokenizedExample
from rayfed.model.prompt_model import PromptModel
from rayfed.types import ClientUpdate


class Algorithm(Protocol):
    """A federated algorithm: what a client computes, and how the server combines it.

    ``client_updates`` runs inside a worker actor; ``aggregate`` runs in the driver and returns
    the pseudo-gradient handed to the server optimizer.
    """

    def client_updates(self, model: PromptModel, trains: Sequence[list[TokenizedExample]],
                       prompts: Sequence[torch.Tensor], seeds: Sequence[int], max_rows: int | None = None,
                       ) -> list[tuple[torch.Tensor, float]]:
        """``(delta, mean_train_loss)`` of each client in one round, from its train split, the
        prompt it starts from (the global one) and its seed.
        Several clients run in lockstep (``rayfed.local.training``), at most ``max_rows`` rows per pass
        (None: all); one client at a time is the same computation."""
        ...

    def aggregate(self, updates: Sequence[ClientUpdate]) -> torch.Tensor:
        """Combine the round's updates into one pseudo-gradient."""
        ...
