"""Prompts and run state on disk (the global prompt, personalized local prompts, a run's
checkpoint): safetensors for tensors, JSON in string metadata, never pickle.

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


class PromptCache:
    """Shares personalization work between runs (Tune trials) that differ only in how they score:
    trained local prompts under a hash of their training settings, and the global prompt's
    reference scores. A file lock per entry makes a concurrent run wait for the one computing
    it instead of computing it again.

    Args:
        root: The cache directory (e.g. a search's ``OUT/local_prompts``).
        seed: The run's seed (part of every key).
    """

    def __init__(self, root: Path, seed: int):
        self.root = Path(root)
        self.seed = seed

    def path(self, settings) -> Path:
        """Where the local prompts trained with ``settings`` are kept."""
        return self.root / f"{settings.training_key(self.seed)}.safetensors"

    def local_prompts(self, settings, train):
        """``(trained, reused)``: the cached local prompts for ``settings``, or ``train()``'s, saved."""
        path = self.path(settings)
        with self._lock(path):
            if path.exists():
                return load_local_prompts(path), True
            trained = train()
            save_local_prompts(path, trained)
            return trained, False

    def reference(self, settings, evaluation, score):
        """The global prompt's scores per client and split, cached by what they depend on: the
        global subsample size, whether validation is scored, and the evaluation settings
        (``eval.*``, which personalizations sharing one run's workers may change)."""
        from rayfed.types import EvalSums

        path = self.root / (f"reference-{settings.global_eval_examples or 'all'}"
                            f"{'' if settings.validation else '-test'}"
                            f"-b{evaluation.batch_size}-t{evaluation.max_new_tokens}.json")
        with self._lock(path):
            if path.exists():
                raw = json.loads(path.read_text())
                return {int(c): {s: EvalSums(**v) for s, v in by_split.items()} for c, by_split in raw.items()}
            scores = score()
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({str(c): {s: vars(v) for s, v in by_split.items()}
                                       for c, by_split in scores.items()}))
            os.replace(tmp, path)
            return scores

    def _lock(self, path: Path):
        from filelock import FileLock

        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(path) + ".lock")


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
