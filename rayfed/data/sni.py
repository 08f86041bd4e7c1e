"""Load Super-NaturalInstructions (SNI), for users who have a copy (it is not on any registry here).

Two layouts are accepted:

- a directory of SNI task files, ``taskNNN_<name>.json``, each with ``Definition`` (list of str),
  ``Categories`` (list of str) and ``Instances`` (``[{"input": str, "output": [str, ...]}]``):
  task = file stem, category = first category, instruction = the definition parts joined with
  a blank line, target = the first output;
- a ``.jsonl`` file of objects with the :class:`Example` fields (task, category, instruction,
  input, target), one per line.
"""

from __future__ import annotations

import json
from pathlib import Path

from rayfed.data.jsonl import read_objects
from rayfed.errors import UserError
from rayfed.types import Example

EXAMPLE_KEYS = ("task", "category", "instruction", "input", "target")


def load_sni(path: Path) -> list[Example]:
    """Load SNI examples from a directory of task files or from a JSONL file (the per-task cap is
    ``rayfed.data.sources.cap_per_task``, applied to every source alike).

    Args:
        path: A directory holding ``task*.json`` files, or a ``.jsonl`` file.

    Raises:
        FileNotFoundError: if ``path`` does not exist or the directory holds no task files.
        ValueError: if a file is malformed; the message names the file (and line).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"SNI data not found at {path}: give a directory of SNI task files "
                                "(taskNNN_*.json) or a .jsonl file of examples")
    if path.is_dir():
        files = sorted(path.glob("task*.json"))
        if not files:
            raise FileNotFoundError(f"no SNI task files (task*.json) in {path}")
        return [ex for f in files for ex in _load_task_file(f)]
    return _load_jsonl(path)


def _load_task_file(path: Path) -> list[Example]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        definition = data["Definition"]
        parts = [definition] if isinstance(definition, str) else definition
        instruction = "\n\n".join(part.strip() for part in parts).strip()
        category = data["Categories"][0] if data.get("Categories") else "uncategorized"
        examples = [Example(path.stem, category, instruction, inst["input"].strip(), inst["output"][0].strip())
                    for inst in data["Instances"] if inst.get("output")]
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, IndexError) as err:
        raise UserError(f"{path}: not an SNI task file ({type(err).__name__}: {err})") from err
    return examples


def _load_jsonl(path: Path) -> list[Example]:
    examples = []
    for lineno, obj in read_objects(path):
        missing = [key for key in EXAMPLE_KEYS if key not in obj]
        if missing:
            names = ", ".join(repr(key) for key in missing)
            raise UserError(f"{path}:{lineno}: missing key {names} (need {', '.join(EXAMPLE_KEYS)})")
        examples.append(Example(**{key: str(obj[key]) for key in EXAMPLE_KEYS}))
    if not examples:
        raise UserError(f"{path}: no examples (the file is empty)")
    return examples
