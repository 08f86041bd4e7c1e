"""Your own data: a JSONL file of records, each naming the site (a branch, a factory, a hospital)
it belongs to; with ``partition.scheme: site`` every site becomes one client.

One record per line::

    {"site": "berlin", "instruction": "Classify the ticket.", "input": "Printer jams", "target": "hardware"}

``site`` and ``target`` are required and must be non-empty; ``instruction`` and ``input`` default
to ``""``; ``task`` (default ``"unlabeled"``) and ``category`` (default: the task) label what kind
of work a record is, which ``rayfed partition`` counts per site; ``id`` and ``meta`` are kept out
of training and may hold anything. Any other key is an error (a misspelt ``"Input"`` would
otherwise train on empty inputs in silence).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from rayfed.data.jsonl import read_objects
from rayfed.data.partition import FederatedData
from rayfed.errors import UserError
from rayfed.types import Example

TEXT_KEYS = ("instruction", "input", "target", "task", "category")
REQUIRED = ("site", "target")
IGNORED = ("id", "meta")
ALLOWED = ("site", *TEXT_KEYS, *IGNORED)
UNLABELED = "unlabeled"


def load_sites(path: Path) -> list[Example]:
    """The records of ``path`` as examples, each with its ``site``, in file order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UserError: a record is malformed; the message names ``path:line`` and the key.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"key 'data.path': no file at {path} (from {Path.cwd()}); data.source sites reads a JSONL file with one "
            f"record per line, {' and '.join(REQUIRED)} required (docs/own-data.md). To try the format, write a "
            f"config's clients as sites: rayfed data sites configs/quickstart.yaml {path}")
    examples = [_example(obj, f"{path}:{lineno}") for lineno, obj in read_objects(path)]
    if not examples:
        raise UserError(f"{path}: no records (the file is empty)")
    return examples


def _example(obj: dict, where: str) -> Example:
    unknown = sorted(set(obj) - set(ALLOWED))
    if unknown:
        raise UserError(f"{where}: unknown key {', '.join(map(repr, unknown))} (a record has {', '.join(ALLOWED)}; "
                        f"put anything else under 'meta')")
    for key in REQUIRED:
        if key not in obj:
            raise UserError(f"{where}: missing key {key!r} (every record needs {' and '.join(REQUIRED)})")
    site = obj["site"]
    if isinstance(site, bool) or not isinstance(site, str | int) or not str(site).strip():
        raise UserError(f"{where}: key 'site' must be a non-empty string or an integer, got {json.dumps(site)}")
    for key in TEXT_KEYS:
        if key in obj and not isinstance(obj[key], str):
            raise UserError(f"{where}: key {key!r} must be a string, got {type(obj[key]).__name__}")
    if not obj["target"].strip():
        raise UserError(f"{where}: key 'target' is empty (a record without a reference output cannot be trained or "
                        f"scored)")
    task = obj.get("task", "").strip() or UNLABELED
    return Example(task=task, category=obj.get("category", "").strip() or task,
                   instruction=obj.get("instruction", "").strip(), input=obj.get("input", "").strip(),
                   target=obj["target"].strip(), site=str(site).strip())


def site_records(examples: Iterable[Example], site: str) -> list[dict[str, str]]:
    """``examples`` as records of ``site`` in this file's schema (what :func:`load_sites` reads back)."""
    return [{"site": site, "task": ex.task, "category": ex.category, "instruction": ex.instruction,
             "input": ex.input, "target": ex.target} for ex in examples]


def write_sites(data: FederatedData, path: Path) -> int:
    """Write every client's examples (train, validation and test) as the records of site
    ``client_<id>`` (or its own site name), atomically; the global sets, which no client holds, are
    left out. Returns the number of records."""
    names = data.sites or tuple(f"client_{c.client_id}" for c in data.clients)
    records = [r for c, site in zip(data.clients, names, strict=True) for r in site_records(c.train + c.val + c.test,
                                                                                            site)]
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{path} is a directory; give the JSONL file to write, e.g. {path / 'sites.jsonl'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    tmp.replace(path)
    return len(records)
