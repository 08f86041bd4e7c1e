"""Prompts on disk (the global prompt, personalized local prompts): safetensors for tensors,
JSON-compatible string metadata, never pickle.

Writes go to a temporary file renamed into place, so a crash mid-write leaves the previous
file intact and loadable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

PROMPT_KEY = "global_prompt"


def save_prompt(path: Path, prompt: torch.Tensor, metadata: dict[str, str] | None = None) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file({PROMPT_KEY: prompt.detach().cpu().contiguous()}, str(tmp), metadata=metadata or {})
    os.replace(tmp, path)


def load_prompt(path: Path) -> tuple[torch.Tensor, dict[str, str]]:
    """Return ``(prompt, metadata)`` from a file written by :func:`save_prompt`."""
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(PROMPT_KEY), f.metadata() or {}


def save_local_prompts(path: Path, trained: dict[int, tuple[dict[int, torch.Tensor], dict[int, float]]]) -> None:
    """Every client's personalized prompt per epoch (tensors ``client_{c}/epoch_{e}``) and its
    train loss per epoch (JSON metadata), atomically."""
    tensors = {f"client_{cid}/epoch_{e}": p.detach().cpu().contiguous()
               for cid, (prompts, _) in trained.items() for e, p in prompts.items()}
    losses = {str(cid): {str(e): v for e, v in epoch_losses.items()} for cid, (_, epoch_losses) in trained.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={"train_losses": json.dumps(losses)})
    os.replace(tmp, path)


def load_local_prompts(path: Path) -> dict[int, tuple[dict[int, torch.Tensor], dict[int, float]]]:
    """The inverse of :func:`save_local_prompts`."""
    with safe_open(str(path), framework="pt") as f:
        losses = json.loads((f.metadata() or {})["train_losses"])
        out: dict[int, tuple[dict[int, torch.Tensor], dict[int, float]]] = {
            int(cid): ({}, {int(e): v for e, v in by_epoch.items()}) for cid, by_epoch in losses.items()}
        for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            client, epoch = key.split("/")
            out[int(client.removeprefix("client_"))][0][int(epoch.removeprefix("epoch_"))] = f.get_tensor(key)
    return out
