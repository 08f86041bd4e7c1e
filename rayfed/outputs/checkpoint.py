"""Prompts and run state on disk (the global prompt, a run's checkpoint): safetensors for tensors,
JSON in string metadata, never pickle (personalized local prompts: rayfed.personalization.cache).

Writes go to a temporary file renamed into place, so a crash mid-write leaves the previous
file intact and loadable.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from rayfed.errors import UserError
from rayfed.outputs.tensorfile import read_metadata, read_tensors

if TYPE_CHECKING:  # torch is imported where tensors are written or checked, so the CLI can read a checkpoint's
    import torch  # round without it (an interrupted command, whose torch import may be the half-done thing)

PROMPT_KEY = "global_prompt"


def save_prompt(path: Path, prompt: torch.Tensor, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file({PROMPT_KEY: prompt.detach().cpu().contiguous()}, str(tmp), metadata=metadata or {})
    os.replace(tmp, path)


def load_prompt(path: Path) -> tuple[torch.Tensor, dict[str, str]]:
    """Return ``(prompt, metadata)`` from a file written by :func:`save_prompt`."""
    tensors, metadata = read_tensors(path)
    return tensors[PROMPT_KEY], metadata


# --- A run's checkpoint: everything `rayfed resume` needs to continue bit for bit -------------

CHECKPOINT = "checkpoint.safetensors"


def save_run_state(path: Path, round_idx: int, driver_state: dict[str, torch.Tensor],
                   record: dict[str, object], identity: str = "") -> None:
    """The round just finished, the driver's tensors (global prompt, server optimizer state) and
    a JSON record (the evaluations a summary needs), in one file written atomically: a crash
    mid-write leaves the previous checkpoint in place. ``identity`` names the run that wrote it
    (rayfed.experiment.run_identity) and a checksum of the tensors' bytes guards them."""
    from safetensors.torch import save_file

    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    tensors = {key: value.detach().cpu().contiguous() for key, value in driver_state.items()}
    save_file(tensors, str(tmp), metadata={"round": str(round_idx), "record": json.dumps(record, sort_keys=True),
                                           "identity": identity, "sha256": _checksum(tensors)})
    os.replace(tmp, path)


def load_run_state(path: Path) -> tuple[int, dict[str, torch.Tensor], dict[str, object]]:
    """``(round, driver tensors, record)`` from :func:`save_run_state`'s file; the record's
    ``identity`` is the run's that wrote it ("" for a checkpoint from before identities).

    Raises:
        FileNotFoundError: no checkpoint.
        UserError: the file is not a readable checkpoint, or its tensors fail their checksum.
    """
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: a run writes one after every checkpoint.every "
                                f"rounds; start it with `rayfed run CONFIG` first")
    try:
        tensors, meta = read_tensors(path)
        round_idx, record = int(meta["round"]), json.loads(meta["record"])
    except Exception as err:  # noqa: BLE001 - safetensors' own error type, bad JSON, a missing key: not a checkpoint
        raise UserError(f"{path} is not a readable rayfed checkpoint ({err}); start over with `rayfed run "
                        f"--overwrite`") from None
    if meta.get("sha256") and meta["sha256"] != _checksum(tensors):
        raise UserError(f"{path} is corrupted: its tensors do not match the checksum written with them; start over "
                        f"with `rayfed run --overwrite`")
    return round_idx, tensors, {**record, "identity": meta.get("identity", "")}


def checkpoint_round(path: Path) -> int | None:
    """The round a checkpoint was written after, read from its header alone; None when there is
    no readable checkpoint."""
    try:
        return int(read_metadata(path)["round"])
    except Exception:  # noqa: BLE001 - missing, unreadable or not a checkpoint: nothing to continue from
        return None


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    import torch

    digest = hashlib.sha256()
    for key in sorted(tensors):
        digest.update(key.encode())
        digest.update(tensors[key].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def truncate_events(path: Path, last_round: int) -> None:
    """Keep only the round and client events of rounds up to ``last_round`` (atomically), so a
    resumed run logs every later round exactly once."""
    if not path.is_file():
        return
    keep = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # a crash mid-write: the last line is cut off, and after the checkpoint
                break
            raise UserError(f"{path}, line {number}: not a JSON event; fix or delete the line to resume") from None
        if event.get("event") in ("round", "client") and event.get("round", last_round + 1) <= last_round:
            keep.append(line + "\n")
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(keep), encoding="utf-8")
    os.replace(tmp, path)
