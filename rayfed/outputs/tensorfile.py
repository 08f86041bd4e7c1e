"""Reading a safetensors file whole, from one read.

A ``safetensors.safe_open`` read of a file that a writer replaces meanwhile (every rayfed writer
renames a finished temporary file into place) can return one file's metadata with the next
one's tensors: 5% of reads of a checkpoint rewritten in a loop failed its checksum (safetensors
0.8, tests/test_resume.py). Reading the bytes once and decoding them gives one consistent file,
the old or the new.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import numpy as np
    import torch


def read_tensors(path: Path, framework: Literal["pt", "np"] = "pt") -> tuple[dict, dict[str, str]]:
    """``(tensors by name, string metadata)`` of the safetensors file at ``path``: torch tensors
    (``framework="pt"``) or numpy arrays (``"np"``).

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not a safetensors file (too short, a bad header).
    """
    data = Path(path).read_bytes()
    metadata = _metadata(data, len(data))
    if framework == "pt":
        from safetensors.torch import load
    else:
        from safetensors.numpy import load
    tensors: dict[str, torch.Tensor] | dict[str, np.ndarray] = load(data)
    return tensors, metadata


def read_metadata(path: Path) -> dict[str, str]:
    """The string metadata of the safetensors file at ``path``, from its header alone (no torch
    import: an interrupted command reads its checkpoint's round with it).

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not a safetensors file.
    """
    with open(path, "rb") as f:
        head = f.read(8)
        size = int.from_bytes(head, "little") if len(head) == 8 else 0
        return _metadata(head + f.read(size), Path(path).stat().st_size)


def _metadata(data: bytes, file_size: int) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's first bytes (8-byte header length, then JSON)."""
    if len(data) < 8:
        raise ValueError(f"{len(data)} bytes, shorter than a safetensors header")
    size = int.from_bytes(data[:8], "little")
    if 8 + size > file_size:
        raise ValueError(f"a header of {size} bytes in a file of {file_size}")
    try:
        header = json.loads(data[8:8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"not a safetensors header ({err})") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return dict(metadata or {})
