"""Prompts and run state on disk (the global prompt, a run's checkpoint): safetensors for tensors,
JSON in string metadata, never pickle (personalized local prompts: rayfed.personalization.cache).

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


# --- A run's checkpoint: everything `rayfed resume` needs to continue bit for bit -------------

CHECKPOINT = "checkpoint.safetensors"


def save_run_state(path: Path, round_idx: int, driver_state: dict[str, torch.Tensor],
                   record: dict[str, object]) -> None:
    """The round just finished, the driver's tensors (global prompt, server optimizer state) and
    a JSON record (the evaluations a summary needs), in one file written atomically: a crash
    mid-write leaves the previous checkpoint in place."""
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    tensors = {key: value.detach().cpu().contiguous() for key, value in driver_state.items()}
    save_file(tensors, str(tmp), metadata={"round": str(round_idx), "record": json.dumps(record, sort_keys=True)})
    os.replace(tmp, path)


def load_run_state(path: Path) -> tuple[int, dict[str, torch.Tensor], dict[str, object]]:
    """``(round, driver tensors, record)`` from :func:`save_run_state`'s file."""
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: a run writes one after every checkpoint.every "
                                f"rounds; start it with `rayfed run CONFIG` first")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - not a mapping
    return int(meta["round"]), tensors, json.loads(meta["record"])


def truncate_events(path: Path, last_round: int) -> None:
    """Keep only the round and client events of rounds up to ``last_round`` (atomically), so a
    resumed run logs every later round exactly once."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        if event.get("event") in ("round", "client") and event.get("round", last_round + 1) <= last_round:
            keep.append(line + "\n")
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(keep), encoding="utf-8")
    os.replace(tmp, path)
