"""Reading a JSONL file of records, one JSON object per line, with errors that name the line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rayfed.errors import UserError

MAX_LINE_BYTES = 1 << 20  # one record per line; a longer line is a broken file, not a record


def read_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Each non-blank line of ``path`` as ``(line number, object)``.

    Raises:
        UserError: a line over :data:`MAX_LINE_BYTES`, not UTF-8, not JSON or not an object
            (the message names ``path:line``).
    """
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if len(raw) > MAX_LINE_BYTES:
                raise UserError(f"{path}:{lineno}: line of {len(raw):,} bytes, over the {MAX_LINE_BYTES:,}-byte "
                                f"limit for one example")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise UserError(f"{path}:{lineno}: not UTF-8 text ({err.reason} at byte {err.start})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{lineno}: invalid JSON ({err})") from err
            if not isinstance(obj, dict):
                raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj
