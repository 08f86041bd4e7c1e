"""The interface every federated algorithm implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from rayfed.data.formatting import TokenizedExample
from rayfed.model import PromptModel
from rayfed.types import ClientUpdate


class Algorithm(Protocol):
    """A federated algorithm: what a client computes, and how the server combines it.

    ``client_update`` runs inside a client actor; ``aggregate`` runs in the driver and returns
    the pseudo-gradient handed to the server optimizer.
    """

    def client_update(self, model: PromptModel, train: list[TokenizedExample],
                      global_prompt: torch.Tensor, seed: int) -> tuple[torch.Tensor, float]:
        """Return ``(delta, mean_train_loss)`` for one client in one round."""
        ...

    def aggregate(self, updates: Sequence[ClientUpdate]) -> torch.Tensor:
        """Combine the round's updates into one pseudo-gradient."""
        ...
