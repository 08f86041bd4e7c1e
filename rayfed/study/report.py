"""The study's results as Markdown (``OUT/results.md``), written from ``analyze``'s output only:
the primary comparisons with their intervals and verdicts, then per claim and concentration its
secondary parts and measures (mean ± std over seeds)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rayfed.study.config import StudyConfig
from rayfed.study.primary import INTERIM
from rayfed.study.runner import progress


def write_report(s: StudyConfig, out: Path) -> dict[str, Any]:
    """Analyze the finished jobs in ``out``; write study.json, results.md and the figures."""
    from rayfed.study.claims import analyze
    from rayfed.study.plots import plot_study

    out.mkdir(parents=True, exist_ok=True)
    finished, total = progress(s, out)
    analysis = analyze(s, out, final=finished == total)
    seconds: dict[str, float] = {}
    machines: dict[str, dict[str, float]] = {}
    if (out / "jobs.jsonl").is_file():
        for line in (out / "jobs.jsonl").read_text(encoding="utf-8").splitlines():
            job = json.loads(line)
            seconds[job["kind"]] = seconds.get(job["kind"], 0.0) + job["seconds"]
            name = f"{job['cpu']} ({job['torch_cpu']})" if "cpu" in job else "not recorded"
            ran = machines.setdefault(name, {"jobs": 0, "seconds": 0.0})
            ran["jobs"] += 1
            ran["seconds"] += job["seconds"]
    analysis["seconds_by_kind"] = seconds
    analysis["machines"] = machines
    analysis["jobs_finished"], analysis["jobs_total"] = finished, total
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
    rows = [[int(r["claim"]), r["name"], r["concentration"], r["primary"], r["rouge_l"].get("verdict", "secondary"),
             r["rouge_l"]["estimate"], r["rouge_l"]["low"], r["rouge_l"]["high"], r["rouge_l"].get("p_adjusted"),
             r["loss"]["estimate"], r["loss"]["low"], r["loss"]["high"]] for r in analysis["primary"]["comparisons"]]
    shown = [[r["name"], r["concentration"], r["rouge_l"]["estimate"], r["rouge_l"]["low"], r["rouge_l"]["high"],
              r["loss"]["estimate"], r["loss"]["low"], r["loss"]["high"]] for r in analysis.get("comparisons", [])]
    for logger in build_loggers(cfg, out, [], job_type="study"):
        logger.log({"event": "table", "key": "study/comparisons", "rows": rows,
                    "columns": ["claim", "comparison", "concentration", "primary", "verdict", "rouge_l", "rouge_l_low",
                                "rouge_l_high", "p_holm", "neg_loss", "neg_loss_low", "neg_loss_high"]})
        if shown:
            logger.log({"event": "table", "key": "study/shown_comparisons", "rows": shown,
                        "columns": ["comparison", "concentration", "rouge_l", "rouge_l_low", "rouge_l_high",
                                    "neg_loss", "neg_loss_low", "neg_loss_high"]})
        for png in figures:
            logger.log({"event": "image", "key": f"study/{png.stem}", "path": str(png)})
        logger.log({"event": "summary", **{f"study/claim{n}": c["verdict"] for n, c in analysis["claims"].items()}})
        logger.close()


def results_markdown(s: StudyConfig, analysis: dict[str, Any], seconds: dict[str, float]) -> str:
    primary = analysis["primary"]
    lines = [f"# Study `{s.name}`: results", "",
             "Computed by `rayfed study` from the result files under this directory. Each claim is decided by its "
             "primary comparisons, fixed in the study file before the run (`verdicts:`): a paired hierarchical "
             "bootstrap (seeds, clients, examples) of test ROUGE-L gives each a 95% interval; Holm's correction "
             f"over the {primary['family_size']} primary comparisons at family-wise alpha {primary['alpha']:g} "
             "decides *reproduced* (the interval at Holm's level excludes 0 the claimed way), *contradicted* (the "
             "other way) or *inconclusive*. -loss is the teacher-forced test loss, negated so that higher is "
             "better, shown and not voted.", "",
             f"Jobs finished: {analysis['jobs_finished']} of {analysis['jobs_total']}; a claim is measured on the "
             "seeds whose jobs have all finished.", ""]
    if analysis["jobs_finished"] < analysis["jobs_total"]:
        lines += [f"**{INTERIM.capitalize()}: no verdict until every job is in.** The estimates, intervals and Holm "
                  "p-values below are those of the finished seeds; the rule's family-wise 5% holds for one look at "
                  "the finished study, and deciding at every look of a running study would spend it again.", ""]
    lines += ["| claim | verdict |", "|---|---|"]
    lines += [f"| {n} | **{claim['verdict']}** |" for n, claim in analysis["claims"].items()]
    lines += [""] + comparison_table(primary["comparisons"])
    if analysis.get("comparisons"):
        lines += ["", "Other comparisons (`comparisons:` in the study file: secondary or post-hoc, shown with their "
                  "95% intervals, never voted):", ""] + comparison_table(analysis["comparisons"])
    lines += ["", "Selected federated learning rates (global validation ROUGE-L, first seed; the grid's default unless "
        "another is reliably better): " + "; ".join(
        f"concentration {c}: " + ", ".join(f"{k} {v:g}" for k, v in lrs.items())
        for c, lrs in analysis["selected_lrs"].items()), ""]
    lines += [f"- concentration {c}, {label}: lr {choice['lr']:g}, {choice['reason']}"
              for c, by_label in analysis.get("lr_choices", {}).items() for label, choice in by_label.items()
              if choice["best"] != choice["default"] or choice["difference"] is not None] + [""]
    lines += _lr_table(analysis.get("lr_grid", {}), analysis["selected_lrs"])
    if analysis.get("not_trained"):
        lines += ["Runs whose final prompt is worse than the untrained one (their comparisons say little):", ""]
        lines += [f"- {note}" for note in analysis["not_trained"]] + [""]
    if seconds:
        lines += [f"Wall time of the jobs recorded in `jobs.jsonl`: {sum(seconds.values()) / 3600:.2f} h "
                  f"({', '.join(f'{k} {v / 60:.0f} min' for k, v in seconds.items())}).", ""]
    if len(analysis.get("machines", {})) > 1:
        lines += ["The jobs ran on more than one kind of CPU, whose float rounding differs (a job's numbers repeat bit "
                  "for bit on one kind only; the seeds cover the rest). By CPU (torch's kernels), as `jobs.jsonl` "
                  "records them:", "", "| CPU | jobs | hours |", "|---|---|---|"]
        lines += [f"| {name} | {ran['jobs']} | {ran['seconds'] / 3600:.2f} |"
                  for name, ran in analysis["machines"].items()]
        lines.append("")
    for number, claim in analysis["claims"].items():
        lines += [f"## Claim {number}: {claim['verdict']}", "", f"> {claim['text']}", "",
                  "Secondary measures (shown, not voted): per-seed paired differences in the claimed direction, "
                  "mean and standard deviation over seeds.", ""]
        for conc, measured in claim["by_concentration"].items():
            lines += [f"### Concentration {conc} ({measured['seeds']} seed(s))", "",
                      "| part | mean difference | std over seeds |", "|---|---|---|"]
            lines += [f"| {p['text']} | {_num(p['mean'], sign=True)} | {_num(p['std'])} |" for p in measured["parts"]]
            lines.append("")
            lines += _table(measured["table"])
    return "\n".join(lines) + "\n"


def comparison_table(rows: list[dict[str, Any]]) -> list[str]:
    """One line per comparison and concentration: ROUGE-L with its 95% interval, the interval at
    Holm's level with the adjusted p and the verdict (primary rows), -loss with its interval."""
    out = ["| claim | comparison | concentration | ROUGE-L [95%] | decisive interval | p (Holm) | verdict | "
           "-loss [95%] | sized for |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rl, loss = r["rouge_l"], r["loss"]
        decided = (f"[{_num(rl['decisive_low'], sign=True)}, {_num(rl['decisive_high'], sign=True)}] at "
                   f"{rl['level'] * 100:.2f}%" if r["primary"] else "secondary")
        p = f"{rl['p_adjusted']:.3g}" if r["primary"] else "-"
        predicted = (f" ({r['direction']} than 0)" if r["direction"] != "equivalent" else f" (within ±{r['margin']:g})")
        shown = r["claim"] == "shown"  # a `comparisons:` row: no claim, no prediction, no size
        out.append(f"| {'-' if shown else r['claim']} | {r['name']}{'' if shown else predicted} | "
                   f"{r['concentration']} | {_interval(rl)} | {decided} | {p} | "
                   f"{rl.get('verdict', 'shown, not voted')} | {_interval(loss)} | "
                   f"{'-' if shown else format(r['effect'], 'g')} |")
    return out


def _interval(stats: dict[str, float]) -> str:
    return f"{_num(stats['estimate'], sign=True)} [{_num(stats['low'], sign=True)}, {_num(stats['high'], sign=True)}]"


def _lr_table(grid: dict, selected: dict) -> list[str]:
    """Final global ROUGE-L (val / test) of the first seed's run at every lr; the selected one in bold."""
    rows = [(conc, label, lr, v) for conc, by_label in grid.items() for label, by_lr in by_label.items()
            for lr, v in by_lr.items()]
    if not rows:
        return []
    out = ["| concentration | algorithm | lr | global val ROUGE-L [95%] | global test ROUGE-L |",
           "|---|---|---|---|---|"]
    for conc, label, lr, v in rows:
        chosen = float(lr) == selected.get(conc, {}).get(label)
        mark = "**" if chosen else ""
        interval = v.get("global_val_interval")
        val = _num(v["global_val"]) + (f" [{_num(interval[0])}, {_num(interval[1])}]" if interval else "")
        out.append(f"| {conc} | {label} | {mark}{lr}{mark} | {val} | {_num(v['global_test'])} |")
    return [*out, ""]


def _table(table: dict[str, dict[str, dict]]) -> list[str]:
    """Rows -> columns -> mean/std, as a Markdown table."""
    cols = list(dict.fromkeys(c for row in table.values() for c in row))
    out = ["| | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    out += [f"| {name} | " + " | ".join(_pm(row[c]) if c in row else "" for c in cols) + " |"
            for name, row in table.items()]
    return [*out, ""]


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
    """Each claim's verdict and its primary comparisons' intervals, and where the files are."""
    primary = analysis["primary"]
    unfinished = analysis["jobs_finished"] < analysis["jobs_total"]
    print(f"\nstudy: {analysis['jobs_finished']} of {analysis['jobs_total']} jobs finished"
          + (f" ({INTERIM}: intervals only, no verdict until every job is in)" if unfinished else ""))
    print(f"study verdicts (test ROUGE-L, 95% paired bootstrap intervals; Holm over {primary['family_size']} primary "
          f"comparisons at alpha {primary['alpha']:g})")
    for number, claim in analysis["claims"].items():
        print(f"  claim {number}: {claim['verdict']}")
        for r in primary["comparisons"]:
            if r["claim"] == number and r["primary"]:
                print(f"    {r['name']} at concentration {r['concentration']}: {_interval(r['rouge_l'])}, "
                      f"p (Holm) {r['rouge_l']['p_adjusted']:.3g}: {r['rouge_l']['verdict']}")
    print(f"results in {out}/ (results.md, study.json, jobs.jsonl, curves.png, robustness.png, frontier.png, "
          f"verdicts.png)")
