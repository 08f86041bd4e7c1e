"""Compare two output trees written by scripts/equality_check.sh from two source trees.

Tensors must match bit for bit and JSON/JSONL/CSV/YAML values exactly; wall-clock fields
(``time/*``, ``seconds``, ``*_s``), process ids and hosts, the trees' own paths and Tune's random
experiment ids (the 5 hex digits before a trial's ``_NNNNN`` index) are ignored. Exits 1 if any
file differs or is missing from the second tree.

    python scripts/compare_outputs.py BEFORE/smoke-ray AFTER/smoke-ray
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

WALL_CLOCK = re.compile(r"^(time/.*|seconds|pid|host|.*_s)$")
EXPERIMENT_ID = re.compile(r"[0-9a-f]{5}(?=_\d{5})")
SKIPPED = ("tune/", "wandb/", ".lock", ".png", ".log")  # Tune's own state, W&B files, figures, logs
JSON_METADATA = ("record", "train_losses")  # safetensors metadata that holds JSON


def normalize(value: Any, root: Path) -> Any:
    if isinstance(value, dict):
        return {normalize(str(k), root): normalize(v, root) for k, v in value.items() if not WALL_CLOCK.match(str(k))}
    if isinstance(value, list):
        return [normalize(v, root) for v in value]
    if isinstance(value, str):
        value = value.replace(str(root.resolve()), "<OUT>").replace(str(root), "<OUT>")
        return EXPERIMENT_ID.sub("<EXP>", value)
    return value


def load(path: Path, root: Path) -> Any:
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            meta = {k: json.loads(v) if k in JSON_METADATA else v for k, v in (f.metadata() or {}).items()}
            return {"tensors": {k: f.get_tensor(k) for k in f.keys()}, "meta": normalize(meta, root)}  # noqa: SIM118
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return normalize(json.loads(text), root)
    if path.suffix == ".jsonl":
        return sorted(json.dumps(normalize(json.loads(line), root), sort_keys=True)
                      for line in text.splitlines() if line.strip())
    if path.suffix == ".csv":
        return [normalize(row, root) for row in csv.DictReader(text.splitlines())]
    return normalize(text, root)


def same(path: Path, a: Any, b: Any) -> bool:
    if path.suffix != ".safetensors":
        return a == b
    return a["meta"] == b["meta"] and a["tensors"].keys() == b["tensors"].keys() and all(
        torch.equal(a["tensors"][k], b["tensors"][k]) for k in a["tensors"])


def main(first: Path, second: Path) -> int:
    index = {EXPERIMENT_ID.sub("<EXP>", str(p.relative_to(second))): p for p in second.rglob("*") if p.is_file()}
    checked = bad = 0
    for path in sorted(p for p in first.rglob("*") if p.is_file()):
        rel = str(path.relative_to(first))
        if any(s in rel for s in SKIPPED):
            continue
        other = index.get(EXPERIMENT_ID.sub("<EXP>", rel))
        checked += 1
        if other is None:
            print(f"missing from {second}: {rel}")
            bad += 1
        elif not same(path, load(path, first), load(other, second)):
            print(f"differs: {rel}")
            bad += 1
    print(f"{checked} files compared, {bad} differ or missing")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
