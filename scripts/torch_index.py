"""Where scripts/setup.sh installs torch from: prints PyTorch's CPU wheel index when this machine
has no NVIDIA GPU and the configured index would install a CUDA build of the pinned torch (PyPI's
Linux wheels depend on several GB of nvidia-* packages), else nothing.

Reads the JSON of ``pip install --dry-run --no-deps --ignore-installed --report - torch==X`` on stdin.
"""

from __future__ import annotations

import json
import shutil
import sys
from typing import Any

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def is_cuda_build(report: dict[str, Any]) -> bool:
    """Whether the torch that pip's report would install is a CUDA build: a ``+cu`` version or
    nvidia-* requirements (PyPI's Linux wheels)."""
    for item in report.get("install", []):
        meta = item.get("metadata") or {}
        if str(meta.get("name", "")).lower() == "torch":
            requires = meta.get("requires_dist") or []
            return "+cu" in str(meta.get("version", "")) or any(str(r).lower().startswith("nvidia-") for r in requires)
    return False


def index_for(report: dict[str, Any], has_nvidia_gpu: bool) -> str | None:
    """The index to install torch from instead of the configured one, or None to keep it."""
    return CPU_INDEX if not has_nvidia_gpu and is_cuda_build(report) else None


def main() -> int:
    try:
        report = json.load(sys.stdin)
    except json.JSONDecodeError:  # pip could not resolve torch at all: let the install say why
        return 0
    index = index_for(report, has_nvidia_gpu=shutil.which("nvidia-smi") is not None)
    if index:
        print(index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
