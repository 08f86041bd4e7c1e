"""What the ``rayfed`` command prints at the end of each job: short tables read off the summaries."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rayfed.config import ExperimentConfig
from rayfed.names import OBJECTIVES, metric_key

SPLIT_COLUMNS = (("local_val", 11), ("global_val", 12), ("local_test", 12), ("global_test", 13))


def print_partition(cfg: ExperimentConfig) -> None:
    from rayfed.data.partition import heterogeneity, histograms
    from rayfed.data.sources import federated_data

    data = federated_data(cfg)
    hists = histograms(data)
    units = sorted(set().union(*hists))
    width = max(len(u) for u in (*units, "client"))
    print(f"{'client':<{width}} " + " ".join(f"{c:>5}" for c in range(len(hists))))
    for unit in units:
        print(f"{unit:<{width}} " + " ".join(f"{h[unit]:>5}" for h in hists))
    if data.sites:
        print(f"{'train':<{width}} " + " ".join(f"{len(c.train):>5}" for c in data.clients))
        print("\nsites: " + ", ".join(f"{cid} = {site}" for cid, site in enumerate(data.sites)))
    print(f"\n{len(data.clients)} clients, {len(data.global_test)} global test and {len(data.global_val)} "
          f"global validation examples, unit: {data.unit}, heterogeneity (mean TV distance to the pooled "
          f"mix): {heterogeneity(data):.3f}")


def print_run(summary: dict[str, Any], output_dir: str) -> None:
    print(f"\n{'global test':<14}{'initial':>10}{'final':>10}")
    for key in ("loss", "exact_match", "rouge_l"):
        print(f"{key:<14}{summary['initial'][key]:>10.4f}{summary['final'][key]:>10.4f}")
    if summary["clients"]:
        print(f"\n{'client':<8}{'local loss':>12}{'local EM':>10}{'local rougeL':>14}")
        for cid, m in sorted(summary["clients"].items(), key=lambda kv: int(kv[0])):
            print(f"{cid:<8}{m['eval/local_test/loss']:>12.4f}{m['eval/local_test/exact_match']:>10.4f}"
                  f"{m['eval/local_test/rouge_l']:>14.4f}")
    if "personalization" in summary:
        print_personalization(summary["personalization"], Path(output_dir))
    comm = summary.get("communication")
    if comm:
        print(f"\ncommunication: {comm['down_bytes']:,.0f} bytes to clients, {comm['up_bytes']:,.0f} from them")
    print(f"\nresults in {output_dir}/ (summary.json, metrics.jsonl, global_prompt.safetensors, adapter/ for PEFT, "
          f"example_scores.safetensors, rounds.png), {summary['seconds']:.0f}s")


def _site_names(run_dir: Path) -> Callable[[int], str]:
    """``5`` -> ``5 (clinic-e)`` for a run on one's own data (its summary's ``sites``), else ``5``."""
    path = run_dir / "summary.json"
    names = json.loads(path.read_text()).get("sites", {}) if path.is_file() else {}
    return lambda cid: f"{cid} ({names[str(cid)]})" if str(cid) in names else str(cid)


def print_rollout(summary: dict[str, Any], run_dir: Path) -> None:
    """Each stage's sites, setting and guard checks, the rollbacks, and the outcome with and without
    the guard; sites by their names where the run has them (``data.source=sites``)."""
    metric = summary["settings"]["metric"]
    site = _site_names(run_dir)

    def sites(ids: list[int]) -> str:
        return "[" + ", ".join(site(c) for c in ids) + "]"

    print(f"\nrollout '{summary['name']}' ({metric}; changes from the global prompt, 95% intervals)")
    for stage in summary["stages"]:
        choice = stage["choice"]
        setting = ("global prompt" if choice["kept_global_prompt"]
                   else f"epoch {choice['epoch']}, ratio {choice['interp_ratio']:g} (local_val gain "
                        f"{_interval(choice['local_val_gain'])}, global_val {_interval(choice['global_val_change'])})")
        waiting = f" and the waiting sites {sites(stage['also_deployed'])}" if stage.get("also_deployed") else ""
        print(f"stage {stage['stage']}: sites {sites(stage['sites'])}{waiting} <- {setting}, "
              f"chosen on sites {sites(stage['support'])}")
        for check in stage["checks"]:
            change = _interval(check["change"]) if check["change"] is not None else "no examples"
            print(f"    guard site {site(check['site']):>3} on {check['examples']} {check['split']} examples: {change}"
                  + ("  -> rolled back" if check["rolled_back"] else ""))
    outcome = summary["outcome"]
    for name in ("with_guard", "without_guard"):
        if f"{name}/{metric}_change" in outcome:
            print(f"served by the {outcome['deployed_sites']} deployed sites, {name.replace('_', ' ')}: "
                  f"{_interval(outcome[f'{name}/{metric}_change'])}")
    print(f"{summary['rollbacks']} rollback(s); results in {run_dir}/rollout/{summary['name']}/ (summary.json, "
          f"rollout.jsonl, rollout.png, adapters/ per site), {summary['seconds']:.0f}s")


def _interval(values: list[float]) -> str:
    est, low, high = values
    return f"{est:+.4f} [{low:+.4f}, {high:+.4f}]"


def print_personalization(summary: dict[str, Any], run_dir: Path) -> None:
    """The selection metric's means over clients per (epoch, ratio) (ROUGE-L unless
    ``personalize.metric`` says loss), the reference and the selected setting."""
    metric = summary.get("settings", {}).get("metric", "rouge_l")
    print(f"\npersonalization '{summary['name']}' ({'ROUGE-L' if metric == 'rouge_l' else metric}, mean over clients)")
    header = f"{'epoch':>5} {'ratio':>6}" + "".join(f"{name:>{w}}" for name, w in SPLIT_COLUMNS)
    print(header)

    def line(label: str, row: dict[str, Any]) -> str:
        cells = [(row.get(metric_key(s, metric, "mean")), w) for s, w in SPLIT_COLUMNS]
        return label + "".join(f"{v:>{w}.4f}" if v is not None else f"{'-':>{w}}" for v, w in cells)

    print(line(f"{'global prompt':>12}", summary["reference"]))
    for row in summary["curve"]:
        if row["epoch"] > 0:
            print(line(f"{row['epoch']:>5} {row['interp_ratio']:>6g}", row))
    chosen = summary.get("selected")
    if chosen and chosen.get("kept_global_prompt"):
        print(f"selected on validation: the global prompt, kept: {chosen['reason']}")
    elif chosen:
        changes = "; ".join(f"{split} change {chosen[k]:+.4f} [{chosen[k + '_low']:+.4f}, {chosen[k + '_high']:+.4f}]"
                            for split in ("local_val", "global_val")
                            if (k := metric_key(split, metric, "change")) in chosen)
        print(f"selected on validation: epoch {chosen['epoch']}, ratio {chosen['interp_ratio']:g}"
              + (f": {changes} (95% intervals)" if changes else "") + f" ({chosen['rule']})")
    else:
        print("no selection: validation splits are empty (set partition.val_examples and global_val_examples)")
    if summary.get("per_client"):
        print_per_client(summary["per_client"], metric)
    print(f"results in {run_dir}/personalize/{summary['name']}/ (summary.json, personalization.jsonl, *.png, "
          f"adapters/ per client with a selection), {summary['seconds']:.0f}s")


def print_search(summary: dict[str, Any], output_dir: Path) -> None:
    """The Pareto trials and the selected one."""
    rows = summary["rows"]
    params = summary["params"]
    finished = sum(row["status"] == "done" for row in rows)
    print(f"\n{len(rows)} trials ({finished} finished); Pareto set on (local_val, global_val) ROUGE-L:")
    print("  ".join(params) + "   local_val  global_val  local_test  global_test")
    for row in rows:
        if row["pareto"]:
            print("  ".join(f"{_short(row[p]):>{len(p)}}" for p in params)
                  + "".join(f"{row.get(k, float('nan')):>11.4f}" for k in OBJECTIVES))
    reliable = [row for row in rows if row.get("pareto_reliable")]
    if reliable:
        print(f"{len(reliable)} of {len(rows)} trials are not reliably dominated (no other trial's 95% intervals of "
              f"its local and global change lie wholly above theirs): the means' Pareto set above is "
              f"{sum(1 for r in rows if r['pareto'])} of them; the rest cannot be told from it")
    s = summary.get("selected")
    if s and s.get("kept_global_prompt"):
        print(f"selected: the global prompt, kept: {s['reason']}")
    elif s:
        print(f"selected ({summary['rule']}): " + ", ".join(f"{p}={_short(s[p])}" for p in params))
    print(f"results in {output_dir}/ (results.csv, pareto.csv, search.json, pareto.png, tune/)")


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def print_per_client(per_client: dict[str, Any], metric: str = "rouge_l") -> None:
    """Per-client selection against the federation-wide setting and the two fixed policies, on test."""
    n = len(per_client["clients"])
    print(f"\nper-client selection: {n - per_client['fallbacks']} of {n} clients chose a setting on their own "
          f"validation split, {per_client['fallbacks']} kept the global prompt")
    print(f"{'policy':<14} {'local_test change [95%]':>30} {'global_test change [95%]':>30}")
    for name, scores in per_client["policies"].items():
        cells = []
        for split in ("local_test", "global_test"):
            change = scores.get(f"{split}/{metric}_change")
            cells.append(f"{change[0]:+.4f} [{change[1]:+.4f}, {change[2]:+.4f}]" if change else "-")
        print(f"{name:<14} {cells[0]:>30} {cells[1]:>30}")
    size = per_client["validation_size"]
    if size["needed_median"] is not None:
        print(f"validation: {size['examples_per_client']:g} examples per client; a client's best mean gain would "
              f"need about {size['needed_median']:g} (median over clients) to be told from noise")
