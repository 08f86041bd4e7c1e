"""The study's results as Markdown (``OUT/results.md``), written from ``analyze``'s output only:
the verdict table, and per claim and concentration its parts and measures (mean ± std over seeds)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rayfed.study.config import StudyConfig
from rayfed.study.runner import progress


def write_report(s: StudyConfig, out: Path) -> dict[str, Any]:
    """Analyze the finished jobs in ``out``; write study.json, results.md and the figures."""
    from rayfed.study.claims import analyze
    from rayfed.study.plots import plot_study

    out.mkdir(parents=True, exist_ok=True)
    analysis = analyze(s, out)
    seconds: dict[str, float] = {}
    if (out / "jobs.jsonl").is_file():
        for line in (out / "jobs.jsonl").read_text(encoding="utf-8").splitlines():
            job = json.loads(line)
            seconds[job["kind"]] = seconds.get(job["kind"], 0.0) + job["seconds"]
    analysis["seconds_by_kind"] = seconds
    analysis["jobs_finished"], analysis["jobs_total"] = progress(s, out)
    (out / "study.json").write_text(json.dumps(analysis, indent=2, sort_keys=True))
    (out / "results.md").write_text(results_markdown(s, analysis, seconds), encoding="utf-8")
    figures = plot_study(s, out)
    analysis["figures"] = [str(p) for p in figures]
    _publish_wandb(s, out, analysis, figures)
    return analysis


def _publish_wandb(s: StudyConfig, out: Path, analysis: dict[str, Any], figures: list[Path]) -> None:
    """With W&B on in the experiment section: one run for the whole study (job type ``study``,
    in the study's group) holding the verdicts, every part and the figures."""
    from rayfed.outputs.loggers import build_loggers
    from rayfed.study.config import run_config

    label = s.personalize.main_algorithm
    cfg = run_config(s, label, s.concentrations[0], s.seeds[0], s.algorithms[label].lrs[0])
    if not cfg.logging.wandb.enabled:
        return
    cfg.name = s.name
    rows = [[int(n), conc, m["verdict"], p["text"], p["mean"], p["std"], p["status"], m["seeds"]]
            for n, claim in analysis["claims"].items() for conc, m in claim["by_concentration"].items()
            for p in m["parts"]]
    for logger in build_loggers(cfg, out, [], job_type="study"):
        logger.log({"event": "table", "key": "study/parts", "rows": rows,
                    "columns": ["claim", "concentration", "verdict", "part", "mean", "std", "status", "seeds"]})
        for png in figures:
            logger.log({"event": "image", "key": f"study/{png.stem}", "path": str(png)})
        logger.log({"event": "summary", **{f"study/claim{n}": c["verdict"] for n, c in analysis["claims"].items()}})
        logger.close()


def results_markdown(s: StudyConfig, analysis: dict[str, Any], seconds: dict[str, float]) -> str:
    concs = [f"{c:g}" for c in s.concentrations]
    lines = [f"# Study `{s.name}`: results", "",
             "Computed by `rayfed study` from the result files under this directory; test ROUGE-L, mean over "
             "clients; ± is the standard deviation over seeds. A part *holds* when its mean paired difference "
             "is positive and larger than that spread.", "",
             f"Jobs finished: {analysis['jobs_finished']} of {analysis['jobs_total']}; a claim is measured on the "
             "seeds whose jobs have all finished.", ""]
    lines += ["| claim | " + " | ".join(f"concentration {c}" for c in concs) + " | verdict |",
              "|---|" + "---|" * (len(concs) + 1)]
    for number, claim in analysis["claims"].items():
        cells = [_cell(claim["by_concentration"].get(c)) for c in concs]
        lines.append(f"| {number} | " + " | ".join(cells) + f" | **{claim['verdict']}** |")
    lines += ["", "Selected federated learning rates (global validation ROUGE-L, first seed): " + "; ".join(
        f"concentration {c}: " + ", ".join(f"{k} {v:g}" for k, v in lrs.items())
        for c, lrs in analysis["selected_lrs"].items()), ""]
    lines += _lr_table(analysis.get("lr_grid", {}), analysis["selected_lrs"])
    if analysis.get("not_trained"):
        lines += ["Runs whose final prompt is worse than the untrained one (their comparisons say little):", ""]
        lines += [f"- {note}" for note in analysis["not_trained"]] + [""]
    if seconds:
        lines += [f"Wall time of the jobs recorded in `jobs.jsonl`: {sum(seconds.values()) / 3600:.2f} h "
                  f"({', '.join(f'{k} {v / 60:.0f} min' for k, v in seconds.items())}).", ""]
    for number, claim in analysis["claims"].items():
        lines += [f"## Claim {number}", "", f"> {claim['text']}", ""]
        for conc, measured in claim["by_concentration"].items():
            lines += [f"### Concentration {conc} ({measured['seeds']} seed(s)): {measured['verdict']}", "",
                      "| part | mean difference | std | status |", "|---|---|---|---|"]
            lines += [f"| {p['text']} | {_num(p['mean'], sign=True)} | {_num(p['std'])} | {p['status']} |"
                      for p in measured["parts"]]
            lines.append("")
            lines += _table(measured["table"])
    return "\n".join(lines) + "\n"


def _lr_table(grid: dict, selected: dict) -> list[str]:
    """Final global ROUGE-L (val / test) of the first seed's run at every lr; the selected one in bold."""
    rows = [(conc, label, lr, v) for conc, by_label in grid.items() for label, by_lr in by_label.items()
            for lr, v in by_lr.items()]
    if not rows:
        return []
    out = ["| concentration | algorithm | lr | global val ROUGE-L | global test ROUGE-L |", "|---|---|---|---|---|"]
    for conc, label, lr, v in rows:
        chosen = float(lr) == selected.get(conc, {}).get(label)
        mark = "**" if chosen else ""
        out.append(f"| {conc} | {label} | {mark}{lr}{mark} | {_num(v['global_val'])} | {_num(v['global_test'])} |")
    return [*out, ""]


def _table(table: dict[str, dict[str, dict]]) -> list[str]:
    """Rows -> columns -> mean/std, as a Markdown table."""
    cols = list(dict.fromkeys(c for row in table.values() for c in row))
    out = ["| | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    out += [f"| {name} | " + " | ".join(_pm(row[c]) if c in row else "" for c in cols) + " |"
            for name, row in table.items()]
    return [*out, ""]


def _cell(measured: dict | None) -> str:
    if measured is None:
        return "not measured"
    marks = {"holds": "yes", "within spread": "within spread", "one seed": "direction only", "fails": "no"}
    return f"{measured['verdict']} ({', '.join(marks[p['status']] for p in measured['parts'])})"


def _pm(stats: dict) -> str:
    if stats["mean"] is None:
        return "-"
    return _num(stats["mean"]) + (f" ± {_num(stats['std'])}" if stats["std"] is not None else "")


def _num(value: float | None, sign: bool = False) -> str:
    """Four decimals; below 0.001 (claim 4's areas are products of two score differences), three
    significant digits instead, so small values are not printed as zero."""
    if value is None:
        return "-"
    if value != 0 and abs(value) < 0.001:
        return f"{value:+.2e}" if sign else f"{value:.2e}"
    return f"{value:+.4f}" if sign else f"{value:.4f}"


def print_study(analysis: dict[str, Any], out: Path) -> None:
    """The verdict per claim and concentration, and where the files are."""
    print(f"\nstudy: {analysis['jobs_finished']} of {analysis['jobs_total']} jobs finished")
    print("study verdicts (test ROUGE-L; a part holds when its mean paired difference exceeds the seed spread)")
    for number, claim in analysis["claims"].items():
        by_conc = "; ".join(f"concentration {c}: {_cell(m)} over {m['seeds']} seed(s)"
                            for c, m in claim["by_concentration"].items())
        print(f"  claim {number}: {claim['verdict']}" + (f" ({by_conc})" if by_conc else ""))
    print(f"results in {out}/ (results.md, study.json, jobs.jsonl, curves.png, robustness.png, frontier.png)")
