"""Prompts on disk: safetensors for tensors, JSON-compatible string metadata, never pickle.

Writes go to a temporary file renamed into place, so a crash mid-write leaves the previous
file intact and loadable.
"""

from __future__ import annotations

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
