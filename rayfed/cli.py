"""The ``rayfed`` command: run, validate, partition, data prepare."""

from __future__ import annotations

import argparse
import sys

from rayfed.builtin_models import ModelNotAvailableError
from rayfed.config import ConfigError, load_config, to_yaml


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rayfed", description="Federated prompt tuning on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "run an experiment"), ("validate", "check a config and print it resolved"),
                       ("partition", "print each client's task histogram and the heterogeneity")):
        p = sub.add_parser(name, help=text)
        p.add_argument("config", help="YAML config file, e.g. configs/quickstart.yaml")
        p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. algorithm.rounds=3")
    data = sub.add_parser("data", help="data caches").add_subparsers(dest="data_command", required=True)
    data.add_parser("prepare", help="download and extract the BIG-bench tasks into the cache")
    model = sub.add_parser("model", help="model caches").add_subparsers(dest="model_command", required=True)
    prep = model.add_parser("prepare", help="convert a built-in model into the cache (once)")
    prep.add_argument("name", nargs="?", default="smollm2-135m")
    args = parser.parse_args(argv)

    try:
        if args.command == "data":
            from rayfed.data.bigbench import prepare_bigbench

            print(f"data ready: {prepare_bigbench()}")
            return 0
        if args.command == "model":
            from rayfed.builtin_models import resolve_model_path

            print(f"model ready: {resolve_model_path(args.name)}")
            return 0
        cfg = load_config(args.config, args.overrides)
        if args.command == "validate":
            print(to_yaml(cfg), end="")
        elif args.command == "partition":
            _print_partition(cfg)
        else:
            from rayfed.experiment import run_experiment

            summary = run_experiment(cfg)
            _print_summary(summary, cfg.output_dir)
        return 0
    except ConfigError as err:
        print(f"rayfed: config error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ModelNotAvailableError, ValueError) as err:  # bad input, not a bug
        print(f"rayfed: {err}", file=sys.stderr)
        return 2


def _print_partition(cfg) -> None:
    from rayfed.data.partition import heterogeneity, histograms
    from rayfed.data.sources import federated_data

    data = federated_data(cfg)
    hists = histograms(data)
    units = sorted(set().union(*hists))
    width = max(len(u) for u in units)
    print(f"{'client':<{width}} " + " ".join(f"{c:>5}" for c in range(len(hists))))
    for unit in units:
        print(f"{unit:<{width}} " + " ".join(f"{h[unit]:>5}" for h in hists))
    print(f"\n{len(data.clients)} clients, {len(data.global_test)} global test examples, "
          f"unit: {data.unit}, heterogeneity (mean TV distance to the pooled mix): {heterogeneity(data):.3f}")


def _print_summary(summary: dict, output_dir: str) -> None:
    print(f"\n{'global test':<14}{'initial':>10}{'final':>10}")
    for key in ("loss", "exact_match", "rouge_l"):
        print(f"{key:<14}{summary['initial'][key]:>10.4f}{summary['final'][key]:>10.4f}")
    if summary["clients"]:
        print(f"\n{'client':<8}{'local loss':>12}{'local EM':>10}{'local rougeL':>14}")
        for cid, m in sorted(summary["clients"].items(), key=lambda kv: int(kv[0])):
            print(f"{cid:<8}{m['eval/local/loss']:>12.4f}{m['eval/local/exact_match']:>10.4f}"
                  f"{m['eval/local/rouge_l']:>14.4f}")
    if "personalization" in summary:
        print(f"\n{'personalized':<24}{'local rougeL':>14}{'global rougeL':>15}{'local loss':>12}{'global loss':>13}")
        rows = []
        if summary["final_local"]:  # the global prompt itself, from the final evaluation
            rows.append(("alpha 0 (global prompt)", summary["final_local"]["eval/local/rouge_l_mean"],
                         summary["final"]["rouge_l"], summary["final_local"]["eval/local/loss_mean"],
                         summary["final"]["loss"]))
        rows += [(f"alpha {key.removeprefix('alpha_')}", m["local"]["rouge_l"], m["global"]["rouge_l"],
                  m["local"]["loss"], m["global"]["loss"]) for key, m in summary["personalization"].items()]
        for label, *values in rows:
            print(f"{label:<24}" + "".join(f"{v:>{w}.4f}" for v, w in zip(values, (14, 15, 12, 13))))
    print(f"\nresults in {output_dir}/ (summary.json, metrics.jsonl, global_prompt.safetensors), "
          f"{summary['seconds']:.0f}s")


if __name__ == "__main__":
    sys.exit(main())
