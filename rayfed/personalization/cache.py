"""Personalized local prompts on disk, and the cache that lets personalizations share them:
safetensors for tensors, JSON in string metadata, never pickle; written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from rayfed.outputs.tensorfile import read_tensors


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
    tensors, metadata = read_tensors(path)
    losses = json.loads(metadata["train_losses"])
    out: dict[int, tuple[dict[int, torch.Tensor], dict[int, float]]] = {
        int(cid): ({}, {int(e): v for e, v in by_epoch.items()}) for cid, by_epoch in losses.items()}
    for key, tensor in tensors.items():
        client, epoch = key.split("/")
        out[int(client.removeprefix("client_"))][0][int(epoch.removeprefix("epoch_"))] = tensor
    return out


RUN_LOCAL_PROMPTS = ".local_prompts"  # in a run directory: what `rayfed personalize` and `rayfed rollout` share


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
                return {int(c): {s: EvalSums.from_dict(v) for s, v in by_split.items()} for c, by_split in raw.items()}
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
