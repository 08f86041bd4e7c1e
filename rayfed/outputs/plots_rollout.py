"""``rollout.png``, drawn from a rollout's ``summary.json`` alone (no torch): which prompt each site
served at each stage, and every guard check's change from the global prompt with its interval."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

ROLLOUT_EVENTS = "rollout.jsonl"  # written by rayfed.personalization.rollout_phase
STATES = (("not yet rolled out", "white"), ("global prompt", "0.75"), ("personalized", "#4c9a56"),
          ("rolled back here", "#c8443a"), ("global after rollback", "#e8b0a8"))


def is_rollout(path: Path) -> bool:
    return (path / ROLLOUT_EVENTS).is_file() and (path / "summary.json").is_file()


def plot_rollout(out: Path) -> list[Path]:
    """``rollout.png`` in ``out``; ``[]`` when it holds no rollout."""
    out = Path(out)
    if not is_rollout(out):
        return []
    summary = json.loads((out / "summary.json").read_text())
    stages, sites = summary["stages"], summary["sites"]
    order = sorted(sites, key=lambda c: (sites[c]["stage"], int(c)))
    grid = np.array([[_state(sites[c], t) for t in range(len(stages))] for c in order])
    margin, metric = summary["settings"]["margin"], summary["settings"]["metric"]

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.32 * len(order) + 2.2),
                                      gridspec_kw={"width_ratios": [1, 1.6]})
    left.imshow(grid, aspect="auto", cmap=ListedColormap([c for _, c in STATES]), vmin=-0.5, vmax=len(STATES) - 0.5)
    checks = {(str(ch["site"]), s["stage"]): ch for s in stages for ch in s["checks"] if ch["change"] is not None}
    for i, c in enumerate(order):
        for t in range(len(stages)):
            if (c, t) in checks:
                left.text(t, i, f"{checks[(c, t)]['change'][0]:+.2f}", ha="center", va="center", fontsize=7)
    left.set_xticks(range(len(stages)), [f"stage {t}" for t in range(len(stages))])
    left.set_yticks(range(len(order)), [f"site {c}" for c in order])
    left.set_title(f"prompt served (numbers: guard change, {metric})", fontsize=9)
    left.legend(handles=[Patch(facecolor=col, edgecolor="0.5", label=name) for name, col in STATES],
                loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3, fontsize=7, frameon=False)

    for k, ((c, _), ch) in enumerate(sorted(checks.items(), key=lambda kv: (kv[0][1], int(kv[0][0])))):
        est, low, high = ch["change"]
        colour = STATES[3][1] if ch["rolled_back"] else STATES[2][1]
        right.errorbar([k], [est], yerr=[[est - low], [high - est]], fmt="o", color=colour, capsize=2)
        right.annotate(f"{c}", (k, high), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=6)
    right.axhline(-margin, color=STATES[3][1], ls="--", lw=1, label=f"rollback below -{margin:g}")
    right.axhline(0, color="0.5", lw=0.8)
    right.set_xticks(range(len(checks)), [f"s{t}" for (_, t) in sorted(checks, key=lambda k: (k[1], int(k[0])))],
                     fontsize=7)
    right.set_ylabel(f"change vs the global prompt\n({metric}, higher is better; 95% interval)", fontsize=8)
    right.set_title("guard checks by stage (labels: site)", fontsize=9)
    right.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    png = out / "rollout.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return [png]


def _state(site: dict, stage: int) -> int:
    """The index in STATES of what ``site`` served at ``stage``."""
    if stage < site["stage"]:
        return 0
    if site.get("deployed_at") is None or stage < site["deployed_at"]:
        return 1
    back = site["rolled_back_at"]
    if back is None or stage < back:
        return 2
    return 3 if stage == back else 4
