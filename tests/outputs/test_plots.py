"""rayfed.outputs.plots: every figure redrawn from fixture output files, without torch or Ray."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rayfed.outputs.plots import plot_path

ROOT = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SPLITS = ("local_val", "local_test", "global_val", "global_test")
METRICS = ("loss", "exact_match", "rouge_l")


def write_run(run_dir: Path, rounds: int = 20, eval_every: int = 5, clients: int = 4) -> None:
    """metrics.jsonl of a run: round events (eval every few rounds), client events, one other event."""
    rng = np.random.default_rng(0)
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [{"event": "config", "note": "ignored by plots"}]
    for r in range(rounds + 1):
        event = {"event": "round", "round": r, "time/round_s": 1.5 + rng.random()}
        if r > 0:
            event["train/loss"] = 3.2 * np.exp(-r / 8) + 0.9 + 0.05 * rng.standard_normal()
        if r % eval_every == 0 or r == rounds:
            g = 0.18 + 0.25 * (1 - np.exp(-r / 6))
            event.update({"eval/global_test/rouge_l": g, "eval/global_val/rouge_l": g + 0.01,
                          "eval/global_test/loss": 3.0 - 1.5 * (g - 0.18) * 4,
                          "eval/local_test/rouge_l_mean": g - 0.02, "eval/local_test/rouge_l_p10": g - 0.12,
                          "eval/local_test/rouge_l_min": g - 0.16, "eval/local_val/rouge_l_mean": g - 0.01,
                          "eval/local_test/loss_mean": 3.1 - 1.4 * (g - 0.18) * 4})
        lines.append(event)
        for c in range(clients):
            lines.append({"event": "client", "round": r, "client_id": c, "train/loss": 2.0 + rng.random(),
                          "eval/local_test/rouge_l": 0.3 + 0.1 * rng.random()})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def _point(epoch: int, ratio: float) -> dict[str, float]:
    """Flat summary keys of one (epoch, ratio): local rises with personalization, global falls."""
    flat: dict[str, float] = {}
    for split in SPLITS:
        fit = 1 - np.exp(-epoch / 3)  # the local prompt helps locally early, hurts globally mostly at high ratios
        rouge = 0.40 + 0.25 * ratio ** 0.7 * fit if split.startswith("local") else 0.42 - 0.12 * ratio ** 2 * fit ** 1.5
        rouge -= 0.015 if split.endswith("test") else 0.0
        for metric, value in (("rouge_l", rouge), ("exact_match", rouge / 2), ("loss", 2.5 - rouge)):
            flat.update({f"{split}/{metric}_mean": value, f"{split}/{metric}_p10": value - 0.08,
                         f"{split}/{metric}_min": value - 0.12})
    return flat


def write_personalization(pers_dir: Path, epochs: int = 8, ratios=(0.0, 0.25, 0.5, 0.75, 1.0),
                          clients: int = 3, summary: bool = True) -> None:
    """personalization.jsonl (per-client records) and summary.json (curve, reference, selected)."""
    pers_dir.mkdir(parents=True, exist_ok=True)
    records, curve = [], []
    for epoch in range(epochs + 1):
        if epoch > 0:
            records += [{"client_id": c, "epoch": epoch, "interp_ratio": None, "split": "train",
                         "loss": 2.0 * np.exp(-epoch / 4) + 0.5 + 0.05 * c} for c in range(clients)]
        for ratio in ratios:
            flat = _point(epoch, ratio)
            curve.append({"epoch": epoch, "interp_ratio": ratio, **flat})
            records += [{"client_id": c, "epoch": epoch, "interp_ratio": ratio, "split": split, "count": 8,
                         **{m: flat[f"{split}/{m}_mean"] + 0.02 * (c - 1) for m in METRICS}}
                        for c in range(clients) for split in SPLITS]
    (pers_dir / "personalization.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if summary:
        sel = {"epoch": 4, "interp_ratio": 0.5, **_point(4, 0.5), "rule": "max local_val given global_val >= 0.95 ref"}
        (pers_dir / "summary.json").write_text(json.dumps({
            "name": pers_dir.name, "settings": {"epochs": epochs, "lr": 0.01}, "curve": curve,
            "reference": _point(0, 0.0), "selected": sel}))


def write_search(search_dir: Path, trials: int = 24) -> None:
    """results.csv and search.json of a personalization search over l2_strength and lr."""
    rng = np.random.default_rng(1)
    search_dir.mkdir(parents=True, exist_ok=True)
    params = ["personalize.l2_strength", "personalize.lr"]
    cols = ["trial_id", "status", *params, "epoch", "local_val_rouge_l", "global_val_rouge_l",
            "local_test_rouge_l", "global_test_rouge_l", "pareto", "selected"]
    rows = []
    for t in range(trials):
        l2 = float(10 ** rng.uniform(-4, 0))
        gain = (1 - np.log10(l2 * 1e4) / 4) * rng.uniform(0.6, 1.0)  # strong l2 keeps it global
        local, glob = 0.40 + 0.22 * max(gain, 0), 0.42 - 0.10 * max(gain, 0) ** 1.5 - 0.03 * rng.random()
        rows.append({"trial_id": f"t{t:03d}", "status": "TERMINATED", params[0]: l2, params[1]: 0.01,
                     "epoch": int(rng.integers(1, 9)), "local_val_rouge_l": local, "global_val_rouge_l": glob,
                     "local_test_rouge_l": local - 0.01, "global_test_rouge_l": glob - 0.01, "pareto": 0,
                     "selected": 0})
    rows.append({**rows[0], "trial_id": "t999", "status": "ERROR", "local_val_rouge_l": "",
                 "global_val_rouge_l": ""})
    done = [r for r in rows if r["status"] == "TERMINATED"]
    for r in done:
        r["pareto"] = int(not any(o["local_val_rouge_l"] >= r["local_val_rouge_l"] and o["global_val_rouge_l"]
                                  >= r["global_val_rouge_l"] and o is not r for o in done))
    front = sorted((r for r in done if r["pareto"]), key=lambda r: r["local_val_rouge_l"])
    front[len(front) // 2]["selected"] = 1
    with open(search_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        writer.writerows(rows)
    ref = {"local_val_rouge_l": 0.40, "global_val_rouge_l": 0.42, "local_test_rouge_l": 0.39,
           "global_test_rouge_l": 0.41}
    (search_dir / "search.json").write_text(json.dumps({
        "name": search_dir.name, "kind": "personalize", "params": params, "reference": ref,
        "rule": "highest local_val_rouge_l among Pareto trials whose global_val_rouge_l >= reference - 0.02",
        "selected": front[len(front) // 2]}))


def assert_pngs(paths: list[Path], names: set[str]) -> None:
    import matplotlib.image as mpimg

    assert {p.name for p in paths} == names
    for p in paths:
        assert p.is_file() and p.stat().st_size > 1000
        assert p.read_bytes()[:8] == PNG_SIGNATURE
        height, width = mpimg.imread(p).shape[:2]
        assert 300 <= height <= 2500 and 400 <= width <= 3000, (p.name, height, width)


def test_run_with_personalization_subdirectories(tmp_path):
    run = tmp_path / "run"
    write_run(run)
    write_personalization(run / "personalize" / "ft_l2", epochs=8)
    write_personalization(run / "personalize" / "no_summary", epochs=3, ratios=(0.0, 1.0), summary=False)
    paths = plot_path(run)
    assert run / "rounds.png" in paths
    assert_pngs(paths, {"rounds.png", "curves.png", "curves_by_epoch.png", "interpolation.png"})
    assert len(paths) == 7
    assert (run / "personalize" / "no_summary" / "curves.png").is_file()


def test_personalization_directory(tmp_path):
    pers = tmp_path / "p"
    write_personalization(pers, ratios=(0.5,))  # one ratio: no interpolation figure
    assert_pngs(plot_path(pers), {"curves.png", "curves_by_epoch.png"})


def test_search_directory(tmp_path):
    write_search(tmp_path / "search")
    assert_pngs(plot_path(tmp_path / "search"), {"pareto.png"})


def test_run_without_val_or_local_metrics(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    events = [{"event": "round", "round": r, "train/loss": 2.0 - 0.1 * r, "eval/global_test/rouge_l": 0.2 + 0.01 * r}
              for r in range(5)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events) + '{"event": "rou')
    assert_pngs(plot_path(run / "metrics.jsonl"), {"rounds.png"})


def test_nothing_known_raises(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        plot_path(tmp_path)


def test_plots_import_neither_torch_nor_ray(tmp_path):
    write_run(tmp_path / "run")
    write_personalization(tmp_path / "run" / "personalize" / "a", epochs=2, ratios=(0.0, 1.0))
    write_search(tmp_path / "search", trials=6)
    code = (f"import sys, rayfed.outputs.plots as p; from pathlib import Path; "
            f"p.plot_path(Path({str(tmp_path / 'run')!r})); p.plot_path(Path({str(tmp_path / 'search')!r})); "
            f"assert 'torch' not in sys.modules and 'ray' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)



def test_rayfed_plot_needs_neither_torch_nor_ray(tmp_path, plot_without_torch_or_ray):
    write_run(tmp_path / "run")
    write_personalization(tmp_path / "run" / "personalize" / "a", epochs=2, ratios=(0.0, 1.0))
    write_personalization(tmp_path / "pers", epochs=2, ratios=(0.0, 1.0))
    write_search(tmp_path / "search", trials=6)
    assert {Path(p).name for p in plot_without_torch_or_ray(tmp_path / "run")} >= {"rounds.png", "curves.png"}
    assert {Path(p).name for p in plot_without_torch_or_ray(tmp_path / "pers")} >= {"curves.png"}
    assert [Path(p).name for p in plot_without_torch_or_ray(tmp_path / "search")] == ["pareto.png"]
