"""The prompt maps drawn from their JSON files alone (no torch): ``prompt_tokens.png``, each
virtual token's nearest vocabulary tokens coloured by cosine, and ``drift.png``, how far each
client's personalized prompt moved from the global one, virtual token by virtual token."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rayfed.outputs.prompt_files import PROMPT_MAP, PROMPT_TOKENS  # noqa: E402

DPI = 120


def plot_prompt_tokens(run_dir: Path) -> list[Path]:
    """``prompt_tokens.png`` from ``prompt_tokens.json``; ``[]`` without it."""
    data = read_json(run_dir / PROMPT_TOKENS)
    rows = data.get("virtual_tokens") or []
    if not rows:
        return []
    k = max(len(r["nearest"]) for r in rows)
    cos = np.full((len(rows), k), np.nan)
    for i, r in enumerate(rows):
        cos[i, :len(r["nearest"])] = [n["cosine"] for n in r["nearest"]]
    fig, ax = plt.subplots(figsize=(2.0 * k + 1.5, 0.32 * len(rows) + 1.4))
    image = ax.imshow(cos, aspect="auto", cmap="viridis", vmin=min(0.0, float(np.nanmin(cos))), vmax=1.0)
    for i, r in enumerate(rows):
        for j, n in enumerate(r["nearest"]):
            ax.text(j, i, f"{n['token']!r} {n['cosine']:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if n["cosine"] < 0.6 else "black")
    ax.set_xticks(range(k), [f"#{j + 1}" for j in range(k)])
    ax.set_yticks(range(len(rows)), [str(r["index"]) for r in rows])
    ax.set_xlabel("nearest vocabulary tokens, best first (cosine to the input embeddings)")
    ax.set_ylabel("virtual token")
    ax.set_title(f"What the global prompt reads as (round {data.get('round', '?')})")
    fig.colorbar(image, ax=ax, label="cosine")
    return [_save(fig, run_dir / "prompt_tokens.png")]


def plot_prompt_map(pers_dir: Path) -> list[Path]:
    """``drift.png`` from ``prompt_map.json``; ``[]`` without it."""
    data = read_json(pers_dir / PROMPT_MAP)
    clients = data.get("clients") or {}
    if not clients:
        return []
    ids = sorted(clients, key=int)
    grid = np.array([clients[c]["drift"] for c in ids], dtype=float)
    fig, ax = plt.subplots(figsize=(0.3 * grid.shape[1] + 2.5, 0.35 * len(ids) + 1.6))
    image = ax.imshow(grid, aspect="auto", cmap="magma")
    ax.set_yticks(range(len(ids)), [f"client {c} ({grid[i].mean():.2f})" for i, c in enumerate(ids)])
    ax.set_xticks(range(grid.shape[1]))
    ax.set_xlabel("virtual token")
    ax.set_title(f"How far each client's prompt moved from the global one (epoch {data.get('epoch', '?')}; "
                 f"row mean in brackets)", fontsize=9)
    fig.colorbar(image, ax=ax, label="distance / mean global row norm")
    return [_save(fig, pers_dir / "drift.png")]


def read_json(path: Path) -> dict:
    """A JSON object file's content; {} when missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _save(fig, path: Path) -> Path:  # noqa: ANN001 - a matplotlib figure
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path
