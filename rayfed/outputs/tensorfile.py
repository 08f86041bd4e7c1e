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
from typing import Literal

import numpy as np
import torch
from safetensors.numpy import load as load_numpy
from safetensors.torch import load as load_torch


def read_tensors(path: Path, framework: Literal["pt", "np"] = "pt") -> tuple[dict, dict[str, str]]:
    """``(tensors by name, string metadata)`` of the safetensors file at ``path``: torch tensors
    (``framework="pt"``) or numpy arrays (``"np"``).

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not a safetensors file (too short, a bad header).
    """
    data = Path(path).read_bytes()
    if len(data) < 8:
        raise ValueError(f"{len(data)} bytes, shorter than a safetensors header")
    size = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8:8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"not a safetensors header ({err})") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    tensors: dict[str, torch.Tensor] | dict[str, np.ndarray] = (load_torch if framework == "pt" else load_numpy)(data)
    return tensors, dict(metadata or {})
