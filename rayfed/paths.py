"""Where rayfed keeps caches that never belong in git (converted models, prepared data)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of rayfed's caches: ``$RAYFED_CACHE`` if set, else ``~/.cache/rayfed``."""
    root = os.environ.get("RAYFED_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "rayfed"
