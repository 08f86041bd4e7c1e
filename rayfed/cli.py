"""The ``rayfed`` command: run, resume, personalize, tune, study, plot, validate, partition, data/model prepare."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rayfed.builtin_models import ModelNotAvailableError
from rayfed.config import ConfigError, load_config, to_yaml
from rayfed.runtime.errors import WorkerLostError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rayfed", description="Federated prompt tuning on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "run an experiment"), ("tune", "Ray Tune search over config keys (tune: section)"),
                       ("validate", "check a config and print it resolved"),
                       ("partition", "print each client's task histogram and the heterogeneity")):
        p = sub.add_parser(name, help=text)
        p.add_argument("config", help="YAML config file, e.g. configs/quickstart.yaml")
        p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. algorithm.rounds=3")
        if name == "tune":
            p.add_argument("--resume", action="store_true", help="continue an interrupted search in output_dir")
        if name == "run":
            p.add_argument("--overwrite", action="store_true", help="start over in an output_dir that holds a run")
    p = sub.add_parser("study", help="run (or continue) a study: federated runs, personalizations, verdicts")
    p.add_argument("config", help="a study file, e.g. configs/study/quick.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the study file, e.g. seeds=[0]")
    p.add_argument("--report-only", action="store_true", help="only analyze the finished jobs and redraw")
    p = sub.add_parser("resume", help="continue an interrupted run from its last checkpoint, bit for bit")
    p.add_argument("run_dir", help="the interrupted run's output directory")
    p.add_argument("overrides", nargs="*", help="runtime.*/ray.*/logging.*/personalize.* overrides")
    p = sub.add_parser("personalize", help="personalize a finished run's global prompt: curves per epoch")
    p.add_argument("run_dir", help="a finished run's output directory")
    p.add_argument("overrides", nargs="*", help="personalize.*/eval.*/runtime.*/logging.* overrides")
    p = sub.add_parser("plot", help="redraw every figure of a run, personalization or search directory")
    p.add_argument("path")
    data = sub.add_parser("data", help="data caches").add_subparsers(dest="data_command", required=True)
    data.add_parser("prepare", help="download and extract the BIG-bench tasks into the cache")
    model = sub.add_parser("model", help="model caches").add_subparsers(dest="model_command", required=True)
    prep = model.add_parser("prepare", help="convert a built-in model into the cache (once)")
    prep.add_argument("name", nargs="?", default="smollm2-135m")
    # Flags may come after key=value overrides (argparse alone would stop at the first flag).
    args, extra = parser.parse_known_args(argv)
    if extra and (not hasattr(args, "overrides") or any(e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]

    try:
        if args.command == "data":
            from rayfed.data.bigbench import prepare_bigbench

            print(f"data ready: {prepare_bigbench()}")
        elif args.command == "model":
            from rayfed.builtin_models import resolve_model_path

            print(f"model ready: {resolve_model_path(args.name)}")
        elif args.command == "plot":
            from rayfed.plots import plot_path

            for png in plot_path(Path(args.path)):
                print(png)
        elif args.command == "study":
            from rayfed.study.config import load_study
            from rayfed.study.report import print_study, write_report
            from rayfed.study.runner import run_study

            study = load_study(args.config, args.overrides)
            out = Path(study.output_dir)
            if not args.report_only:
                run_study(study, out)
            print_study(write_report(study, out), out)
        elif args.command == "resume":
            from rayfed.experiment import resume_experiment
            from rayfed.report import print_run

            print_run(resume_experiment(args.run_dir, args.overrides), args.run_dir)
        elif args.command == "personalize":
            from rayfed.experiment import run_personalization
            from rayfed.report import print_personalization

            print_personalization(run_personalization(args.run_dir, args.overrides), Path(args.run_dir))
        else:
            cfg = load_config(args.config, args.overrides)
            if args.command == "validate":
                print(to_yaml(cfg), end="")
            elif args.command == "partition":
                from rayfed.report import print_partition

                print_partition(cfg)
            elif args.command == "tune":
                from rayfed.report import print_search
                from rayfed.tuning import SearchInterrupted, run_search

                try:
                    print_search(run_search(cfg, resume=args.resume), Path(cfg.output_dir))
                except SearchInterrupted as err:
                    print(f"rayfed: {err}", file=sys.stderr)
                    return 130
            else:
                from rayfed.experiment import run_experiment
                from rayfed.report import print_run

                print_run(run_experiment(cfg, overwrite=args.overwrite), cfg.output_dir)
        return 0
    except ConfigError as err:
        print(f"rayfed: config error: {err}", file=sys.stderr)
        return 2
    except (OSError, ModelNotAvailableError, ValueError) as err:  # bad input or a full disk, not a bug
        cause = getattr(err, "cause", None) or err  # an error raised in a Ray actor: the original
        print(f"rayfed: {cause}", file=sys.stderr)
        return 2
    except WorkerLostError as err:  # raised in the driver actor: its message, not Ray's traceback
        print(f"rayfed: {getattr(err, 'cause', None) or err} (the last checkpoint is intact: "
              f"`rayfed resume` continues)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
