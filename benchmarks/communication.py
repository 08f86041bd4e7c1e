"""Quality against bytes: one run per ``communication.compress`` setting of a config, for each
adapter method asked for (``--methods``, ``model.peft`` values; default the config's own).

Prints, per method and setting, the final global test loss and ROUGE-L (with the 95% bootstrap interval of
the loss over the global test examples, from the run's summary, and of its change from the
uncompressed run of the same method, paired by example), the bytes clients sent up and
received down over the run, and the upload as a ratio to the uncompressed prompt's (the first
method's). Full
fine-tuning's bytes are computed for reference: every backbone parameter in float32, once down
and once up per dispatched client per round (the same rounds and clients as these runs).

    .venv/bin/python benchmarks/communication.py configs/smoke.yaml              # tiny model, minutes
    .venv/bin/python benchmarks/communication.py configs/quickstart.yaml         # SmolLM2-135M, hours on 2 cores
    .venv/bin/python benchmarks/communication.py configs/smoke.yaml --plot docs/figures/communication_smoke.png \
        --methods prompt_tuning,prefix_tuning,lora
    .venv/bin/python benchmarks/communication.py configs/quickstart.yaml eval.eval_every=5 \
        --methods prompt_tuning,prefix_tuning,lora --set lora:algorithm.client_optimizer.lr=0.003 \
        --settings "none,int8,topk 10%" --out outputs/communication
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from rayfed.config import changes_text, config_changes, load_config
from rayfed.experiment import run_experiment
from rayfed.model.prompt_model import load_backbone
from rayfed.outputs.checkpoint import CHECKPOINT
from rayfed.outputs.scores import final_scores, paired_change

SETTINGS = {"none": [], "fp16": [], "int8": [], "topk 10%": ["communication.topk_fraction=0.1"],
            "topk 1%": ["communication.topk_fraction=0.01"]}


def run_all(config: str, overrides: list[str], methods: list[str | None], settings: list[str],
            out: Path | None = None, per_method: dict[str, list[str]] | None = None) -> dict[str, dict]:
    """``{"METHOD SETTING": row}`` (``SETTING`` alone for the config's own method). With ``out``,
    each run keeps its directory there: a finished one is read back, a cut-off one resumes from its
    checkpoint, so an interrupted benchmark continues where it stopped. ``per_method[METHOD]``:
    overrides for that method's runs only (its own learning rate, say)."""
    with tempfile.TemporaryDirectory() as tmp:
        return _run_all(config, overrides, methods, settings, out or Path(tmp), per_method or {})


def _run_all(config: str, overrides: list[str], methods: list[str | None], settings: list[str],
             out: Path, per_method: dict[str, list[str]]) -> dict[str, dict]:
    rows = {}
    for method in methods:
        peft = [f"model.peft={method}", *per_method.get(method, [])] if method else []
        mine = {}
        for label in settings:
            name = f"{method} {label}" if method else label
            cfg = load_config(config, [*overrides, *peft, f"communication.compress={label.split()[0]}",
                                       *SETTINGS[label], f"output_dir={out / name.replace(' ', '-').replace('%', '')}"])
            run = Path(cfg.output_dir)
            if (run / "summary.json").is_file():  # read back only if it ran what this command asks for
                changed = config_changes(load_config(run / "config.yaml"), cfg)
                if changed:
                    raise SystemExit(f"{run} holds a run with other settings "
                                     f"({changes_text(changed, 'there', 'now')}); give --out another directory, "
                                     "or remove that run")
                summary = json.loads((run / "summary.json").read_text())
            else:
                summary = run_experiment(cfg, loggers=[], resume=(run / CHECKPOINT).is_file())
            mine[name] = {"method": method or cfg.model.peft, "setting": label, **summary["final"],
                          "loss_interval": summary["final_intervals"]["global_test"]["loss"],
                          **summary["communication"], "_scores": final_scores(run)}
        base = next(iter(mine.values()))["_scores"]
        for r in mine.values():  # the change from this method uncompressed, paired by example
            r["loss_change"] = list(paired_change(base, r.pop("_scores")))
        rows.update(mine)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--plot", help="write the ROUGE-L / loss against uploaded bytes figure here")
    parser.add_argument("--methods", help="comma-separated model.peft values to compare (default: the config's)")
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help="comma-separated compress settings, none first (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="keep each run's directory here; rerunning the same command "
                        "reads finished runs back and resumes a cut-off one (default: a temporary directory)")
    parser.add_argument("--set", action="append", default=[], metavar="METHOD:KEY=VALUE",
                        help="an override for one method's runs only, e.g. lora:algorithm.client_optimizer.lr=0.003")
    args = parser.parse_args()
    per_method: dict[str, list[str]] = {}
    for item in args.set:
        method, _, override = item.partition(":")
        if "=" not in override:
            parser.error(f"--set {item}: expected METHOD:KEY=VALUE")
        per_method.setdefault(method, []).append(override)
    settings = args.settings.split(",")
    if settings[0] != "none" or not set(settings) <= set(SETTINGS):
        parser.error(f"--settings: names from {', '.join(SETTINGS)}, none first (each change is from it)")
    methods = args.methods.split(",") if args.methods else [None]
    if not set(per_method) <= set(methods):
        parser.error(f"--set names {', '.join(sorted(set(per_method) - set(methods)))}, not in --methods")
    rows = run_all(args.config, args.overrides, methods, settings, args.out, per_method)

    cfg = load_config(args.config, args.overrides)
    backbone, _ = load_backbone(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)
    params = sum(p.numel() for p in backbone.parameters())
    base = next(iter(rows.values()))  # the first method uncompressed
    dispatched = base["down_bytes"] / base["prompt_bytes"]  # client-rounds that received the prompt
    full = params * 4 * dispatched

    width = max(10, *map(len, rows))
    print(f"{'compress':<{width}} {'loss':>8} {'loss 95% interval':>19} {'change from its none [95%]':>27} "
          f"{'rougeL':>7} {'up bytes':>12} {'vs first':>8} {'down bytes':>12}")
    for label, r in rows.items():
        low, high = r["loss_interval"]
        change, c_low, c_high = r["loss_change"]
        print(f"{label:<{width}} {r['loss']:>8.4f} [{low:>7.4f}, {high:>7.4f}] "
              f"{change:>+8.4f} [{c_low:>+7.4f}, {c_high:>+7.4f}] {r['rouge_l']:>7.4f} {r['up_bytes']:>12,.0f} "
              f"{r['up_bytes'] / base['up_bytes']:>7.3f}x {r['down_bytes']:>12,.0f}")
    print(f"{'full FT':<{width}} {'':>8} {'':>19} {'':>27} {'':>7} {full:>12,.0f} {full / base['up_bytes']:>7.0f}x "
          f"{full:>12,.0f}   ({params:,} float32 parameters each way per client-round)")
    print(json.dumps({"rows": rows, "full_finetuning_bytes_each_way": full, "backbone_parameters": params},
                     sort_keys=True))
    if args.plot:
        plot(rows, args.plot)


def plot(rows: dict[str, dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods: dict[str, list[dict]] = {}
    for r in rows.values():
        methods.setdefault(r["method"], []).append(r)
    for (method, points), color in zip(methods.items(), ["C0", "C1", "C2", "C3", "C4"], strict=False):
        for i, r in enumerate(points):
            low, high = r["loss_interval"]
            ax.errorbar(r["up_bytes"], r["loss"], yerr=[[r["loss"] - low], [high - r["loss"]]], fmt="o", capsize=3,
                        color=color, label=method if i == 0 else None)
            ax.annotate(r["setting"], (r["up_bytes"], r["loss"]), textcoords="offset points", xytext=(5, 5), fontsize=7)
    ax.legend(title="model.peft")
    ax.set_xscale("log")
    ax.set_xlabel("bytes uploaded by clients over the run (log)")
    ax.set_ylabel("final global test loss (95% interval over examples)")
    ax.set_title("Client-to-server compression: quality against bytes")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(path)


if __name__ == "__main__":
    main()
