"""The prompt maps on disk (JSON, read by ``rayfed plot`` without torch):

- a run's ``prompt_tokens.json``: the global prompt's virtual tokens, each with its nearest
  vocabulary tokens (``id``, ``token``, ``cosine``, best first) and its norm;
- a personalization's ``prompt_map.json``: per client, each virtual token's drift from the global
  prompt (rayfed.local.prompt_map.drift) and its personalized prompt's nearest tokens, at the
  selected epoch (the last one without a selection).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch-free to import: rayfed plot reads the names below
    import torch

PROMPT_TOKENS = "prompt_tokens.json"
PROMPT_MAP = "prompt_map.json"
NEAREST = 5  # vocabulary tokens kept per virtual token


def write_prompt_tokens(out: Path, driver: Any, prompt: torch.Tensor, round_idx: int) -> None:
    """``out/prompt_tokens.json`` for the global ``prompt`` (the worker of client 0 reads the
    vocabulary); none for a prefix, whose virtual tokens have no nearest tokens."""
    nearest = driver.prompt_tokens({0: {"global": prompt}}, NEAREST)[0]["global"]
    if not any(nearest):
        return
    rows = [{"index": i, "norm": round(float(prompt[i].norm()), 4), "nearest": near} for i, near in enumerate(nearest)]
    _write(out / PROMPT_TOKENS, {"prompt": "global", "round": round_idx, "virtual_tokens": rows})


def write_prompt_map(out: Path, driver: Any, global_prompt: torch.Tensor,
                     local: dict[int, torch.Tensor], epoch: int) -> None:
    """``out/prompt_map.json``: each client's drift per virtual token and its local prompt's nearest
    tokens (read on the client's own worker)."""
    from rayfed.local.prompt_map import drift

    nearest = driver.prompt_tokens({cid: {"local": p} for cid, p in local.items()}, NEAREST)
    clients = {str(cid): {"drift": [round(float(d), 4) for d in drift(global_prompt, p)],
                          "nearest": nearest[cid]["local"]} for cid, p in sorted(local.items())}
    _write(out / PROMPT_MAP, {"epoch": epoch, "clients": clients})


def _write(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
