"""The ``rayfed`` command: one small function per subcommand, each importing only what it needs.

A :class:`~rayfed.errors.UserError` (a bad key, a missing cache, a bad data file) and an ``OSError``
(a missing file, a full disk) print as one line and exit 2; anything else is a bug and shows its
traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

from rayfed.config import ConfigError, load_config, to_yaml
from rayfed.errors import (
    RayfedWarning,
    UserError,
    WorkerLostError,
    interrupt_handled,
    interrupts_held,
    raise_interrupted,
)


def cmd_run(args: argparse.Namespace) -> int:
    with interrupts_held():  # each command's heavy imports (torch, transformers, PEFT, Ray): errors.interrupts_held
        from rayfed.experiment import run_experiment
        from rayfed.outputs.report import print_run

    cfg = load_config(args.config, args.overrides)
    print_run(run_experiment(cfg, overwrite=args.overwrite), cfg.output_dir)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    with interrupts_held():
        from rayfed.experiment import resume_experiment
        from rayfed.outputs.report import print_run

    print_run(resume_experiment(args.run_dir, args.overrides), args.run_dir)
    return 0


def cmd_personalize(args: argparse.Namespace) -> int:
    with interrupts_held():
        from rayfed.outputs.report import print_personalization
        from rayfed.personalization.phase import run_personalization

    print_personalization(run_personalization(args.run_dir, args.overrides), Path(args.run_dir))
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    with interrupts_held():
        from rayfed.outputs.report import print_rollout
        from rayfed.personalization.rollout_phase import run_rollout

    print_rollout(run_rollout(args.run_dir, args.overrides), Path(args.run_dir))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    with interrupts_held():
        from rayfed.outputs.report import print_search
        from rayfed.tuning import SearchInterrupted, run_search

    cfg = load_config(args.config, args.overrides)
    try:
        summary = run_search(cfg, resume=args.resume, overwrite=args.overwrite)
    except SearchInterrupted as err:
        print(f"rayfed: {err}", file=sys.stderr)
        return 130
    print_search(summary, Path(cfg.output_dir))
    if not summary["complete"]:  # a trial failed: the search has no result for it
        print(f"rayfed: the search is incomplete: {len(summary['failed'])} of {len(summary['rows'])} trials failed "
              f"({', '.join(summary['failed'])}); results.csv lists them with status error, never ranked or "
              "selected; retry them with `rayfed tune CONFIG --resume` (same overrides)", file=sys.stderr)
        return 1
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    with interrupts_held():
        from rayfed.study.config import load_study
        from rayfed.study.report import print_study, write_report
        from rayfed.study.runner import run_study

    study = load_study(args.config, args.overrides)
    out = Path(study.output_dir)
    if args.power_for:
        return _study_power(study, out, load_study(args.power_for))
    if args.bundle:
        from rayfed.study.bundle import write_bundle

        files = write_bundle(out, Path(args.bundle))
        print(f"bundle: {len(files)} files, {sum(f.stat().st_size for f in files) / 2**20:.1f} MiB in {args.bundle} "
              f"(recompute: rayfed study {args.config} output_dir={args.bundle} --report-only)")
        return 0
    if not args.report_only:
        run_study(study, out)
    print_study(write_report(study, out), out)
    return 0


def _study_power(pilot, out: Path, target) -> int:
    import json

    from rayfed.study.power import power_markdown, power_report

    report = power_report(pilot, out, target)
    (out / f"power-{target.name}.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    text = power_markdown(report)
    (out / f"power-{target.name}.md").write_text(text, encoding="utf-8")
    print(text, end="")
    print(f"written: {out / f'power-{target.name}.md'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import json

    from rayfed.outputs.compare import by_client, compare, format_by_client, format_table, load_source, machines_note

    splits = tuple(s for s in args.splits.split(",") if s)
    sources = [load_source(spec, args.metric) for spec in args.sources]
    result = compare(sources, splits)
    result["metric"] = args.metric
    print(format_table(result, args.metric))
    if note := machines_note(sources):
        result["machines_note"] = note
        print("\n" + note)
    if args.by_client:
        result["by_client"] = by_client(sources, splits)
        print("\n" + format_by_client(result["by_client"], args.metric))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """A run's global prompt as a PEFT adapter directory (runs write RUN_DIR/adapter themselves;
    this rewrites it from global_prompt.safetensors, for a run from before adapters or one cut off)."""
    from rayfed.outputs.adapter import ADAPTER_DIR, save_adapter
    from rayfed.outputs.checkpoint import load_prompt
    from rayfed.settings import ModelSettings

    run_dir = Path(args.run_dir)
    cfg = load_config(run_dir / "config.yaml", [])
    prompt, meta = load_prompt(run_dir / "global_prompt.safetensors")
    target = Path(args.to) if args.to else run_dir / ADAPTER_DIR
    save_adapter(target, prompt, ModelSettings.from_config(cfg.model), max_source_tokens=cfg.data.max_source_tokens,
                 max_target_tokens=cfg.data.max_target_tokens,
                 source={"prompt": "global", "round": int(meta.get("round", -1))})
    print(f"adapter of round {meta.get('round', '?')}: {target} (load it with peft.PeftModel.from_pretrained)")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Figures from files only: a study directory draws the study's figures, any other directory
    what its run, personalization or search files allow (neither needs torch or Ray)."""
    path = Path(args.path)
    directory = path.parent if path.is_file() else path
    if (directory / "study.yaml").is_file():
        from rayfed.study.plots import plot_study_dir

        pngs = plot_study_dir(directory)
    else:
        from rayfed.outputs.plots import plot_path

        pngs = plot_path(path)
    for png in pngs:
        print(png)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """A run config, or a study file (it has ``algorithms:``): every run and comparison it defines."""
    from omegaconf import OmegaConf

    from rayfed.config import read_yaml

    if "algorithms" in read_yaml(args.config, "config file"):
        from rayfed.study.config import load_study

        s = load_study(args.config, args.overrides)
        print(OmegaConf.to_yaml(OmegaConf.structured(s)), end="")
        return 0
    print(to_yaml(load_config(args.config, args.overrides)), end="")
    return 0


def cmd_partition(args: argparse.Namespace) -> int:
    from rayfed.outputs.report import print_partition

    print_partition(load_config(args.config, args.overrides))
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    if args.source == "bigbench":
        from rayfed.data.bigbench import prepare_bigbench

        print(f"data ready: {prepare_bigbench(archive=args.archive)}")
        return 0
    if args.archive is not None:
        raise UserError("--archive is for bigbench: `rayfed data prepare bigbench --archive PATH`")
    from rayfed.data.evals import prepare_evals

    print(f"data ready: {prepare_evals()}")
    return 0


def cmd_data_sites(args: argparse.Namespace) -> int:
    from rayfed.data.sites import write_sites
    from rayfed.data.sources import federated_data

    cfg = load_config(args.config, args.overrides)
    data = federated_data(cfg)
    n = write_sites(data, Path(args.out))
    print(f"{n} records of {len(data.clients)} sites written to {args.out} (read back with data.source=sites "
          f"data.path={args.out} partition.scheme=site partition.num_clients={len(data.clients)})")
    return 0


def cmd_model_prepare(args: argparse.Namespace) -> int:
    from rayfed.model.builtin import resolve_model_path

    print(f"model ready: {resolve_model_path(args.name)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand with its arguments; each sets ``handler`` to its ``cmd_*`` function."""
    parser = argparse.ArgumentParser(prog="rayfed", description="Federated prompt tuning on Ray.")
    from rayfed import __version__

    parser.add_argument("--version", action="version", version=f"rayfed {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, handler: Callable[[argparse.Namespace], int], text: str, first: str, first_help: str,
            overrides_help: str | None = "key=value overrides, e.g. algorithm.rounds=3") -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text)
        p.add_argument(first, help=first_help)
        if overrides_help:
            p.add_argument("overrides", nargs="*", help=overrides_help)
        p.set_defaults(handler=handler)
        return p

    config_help = "YAML config file, e.g. configs/quickstart.yaml"
    add("run", cmd_run, "run an experiment", "config", config_help).add_argument(
        "--overwrite", action="store_true", help="start over in an output_dir that holds a run")
    tune = add("tune", cmd_tune, "Ray Tune search over config keys (tune: section)", "config", config_help)
    how = tune.add_mutually_exclusive_group()
    how.add_argument("--resume", action="store_true", help="continue an interrupted search in output_dir")
    how.add_argument("--overwrite", action="store_true", help="start over in an output_dir that holds a search")
    add("validate", cmd_validate, "check a config and print it resolved", "config", config_help)
    add("partition", cmd_partition, "print each client's task histogram and the heterogeneity", "config", config_help)
    study = add("study", cmd_study, "run (or continue) a study: federated runs, personalizations, verdicts", "config",
                "a study file, e.g. configs/study/quick.yaml", "key=value overrides of the study file, e.g. seeds=[0]")
    study.add_argument("--report-only", action="store_true", help="only analyze the finished jobs and redraw")
    study.add_argument(
        "--power-for", metavar="TARGET", help="treat this finished study as a pilot: the effects the study file "
        "TARGET can detect, and the design each primary comparison needs (writes power-NAME.md/json)")
    study.add_argument("--bundle", metavar="DIR", help="copy the finished study's numbers-only result files to DIR, "
                       "from which --report-only recomputes every table and figure")
    add("resume", cmd_resume, "continue an interrupted run from its last checkpoint, bit for bit", "run_dir",
        "the interrupted run's output directory", "runtime.*/ray.*/logging.*/personalize.* overrides")
    add("personalize", cmd_personalize, "personalize a finished run's global prompt: curves per epoch", "run_dir",
        "a finished run's output directory", "personalize.*/eval.*/runtime.*/logging.* overrides")
    add("rollout", cmd_rollout, "roll a run's personalized prompts out to its sites in stages, with a rollback "
        "guard", "run_dir", "a finished run's output directory", "rollout.*/personalize.*/eval.*/runtime.*/logging.* "
        "overrides")
    cmp = sub.add_parser("compare", help="prompts of runs and personalizations side by side on the same clients, "
                         "with paired 95%% intervals (first source: the reference)")
    cmp.add_argument("sources", nargs="+", help="RUN_DIR[@round=N|@ditto] or PERSONALIZE_DIR[@selected|@per_client|"
                     "@EPOCH,RATIO]")
    cmp.add_argument("--metric", default="rouge_l", choices=("rouge_l", "exact_match", "loss"))
    cmp.add_argument("--splits", default="local_test,global_test", help="comma-separated splits (default: %(default)s)")
    cmp.add_argument("--by-client", action="store_true", help="also each client's change on its own examples")
    cmp.add_argument("--json", metavar="FILE", help="also write the comparison as JSON")
    cmp.set_defaults(handler=cmd_compare)
    add("export", cmd_export, "write a run's global prompt as a PEFT adapter directory", "run_dir",
        "a run's output directory", None).add_argument("--to", help="the adapter directory (default RUN_DIR/adapter)")
    add("plot", cmd_plot, "redraw every figure of a run, personalization, search or study directory", "path",
        "the directory (or a file in it)", None)
    data = sub.add_parser("data", help="data caches").add_subparsers(dest="data_command", required=True)
    prep_data = data.add_parser("prepare", help="download and extract a built-in source's tasks into the cache")
    prep_data.add_argument("source", nargs="?", choices=("evals", "bigbench"), default="evals",
                           help="evals (the default source: a 46 MB wheel from PyPI) or bigbench (its 358 MB "
                           "source archive, where your index still serves it, or --archive)")
    prep_data.add_argument("--archive", type=Path, default=None,
                           help="bigbench: a copy of bigbench-1.0.0.tar.gz to take instead of downloading it")
    prep_data.set_defaults(handler=cmd_data_prepare)
    sites = data.add_parser("sites", help="write a config's clients as site records (the data.source sites format)")
    sites.add_argument("config", help=config_help)
    sites.add_argument("out", help="the JSONL file to write")
    sites.add_argument("overrides", nargs="*", help="key=value overrides, e.g. partition.num_clients=4")
    sites.set_defaults(handler=cmd_data_sites)
    model = sub.add_parser("model", help="model caches").add_subparsers(dest="model_command", required=True)
    prep = model.add_parser("prepare", help="convert a built-in model into the cache (once)")
    prep.add_argument("name", nargs="?", default="smollm2-135m")
    prep.set_defaults(handler=cmd_model_prepare)
    return parser


_python_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001 - warnings' API
    """rayfed's own warnings as one line on stderr; any other warning as Python shows it."""
    if issubclass(category, RayfedWarning):
        print(f"rayfed: warning: {message}", file=sys.stderr)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


def continue_hint(args: argparse.Namespace) -> str:
    """What an interrupted command left and how to go on from it."""
    command = args.command if hasattr(args, "command") else ""
    if command in ("run", "resume"):
        from rayfed.outputs.checkpoint import CHECKPOINT, checkpoint_round

        try:
            run_dir = Path(args.run_dir if command == "resume" else load_config(args.config, args.overrides).output_dir)
        except UserError:  # interrupted before its config was read: nothing was written
            return "nothing was written: run the same command again"
        done = checkpoint_round(run_dir / CHECKPOINT)
        if done is None:
            return f"no round was saved in {run_dir} yet: start again with the same command"
        return f"the checkpoint of round {done} is in {run_dir}: continue with `rayfed resume {run_dir}`"
    if command == "tune":
        return "continue with the same command and --resume"
    if command == "study":
        return "continue with the same command: finished jobs are kept and skipped"
    return "nothing it depends on was changed: run the same command again"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Flags may come after ``key=value`` overrides (argparse alone would stop at the first flag)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and (not hasattr(args, "overrides") or any(e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.showwarning = _show_warning
    previous = {}
    if threading.current_thread() is threading.main_thread():
        # One interrupt, then the clean-up runs undisturbed (Ray's runtime re-installs SIGTERM's too).
        # A Ctrl-C ignored by whoever started the process (a shell's `&`) stays ignored.
        previous = {sig: signal.signal(sig, raise_interrupted) for sig in (signal.SIGINT, signal.SIGTERM)
                    if signal.getsignal(sig) != signal.SIG_IGN}
    interrupt_handled()
    try:
        code = args.handler(args)
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM: one line, no traceback
        interrupt_handled()
        signum = getattr(err, "signum", signal.SIGINT)
        try:
            hint = continue_hint(args)
        except Exception:  # noqa: BLE001 - the interrupt left a module half-imported: still one line
            hint = "run the same command again (`rayfed resume RUN_DIR` if it had saved a round)"
        print(f"rayfed: interrupted by {signal.Signals(signum).name}; {hint}", file=sys.stderr)
        code = 128 + signum
    except ConfigError as err:
        print(f"rayfed: config error: {err}", file=sys.stderr)
        code = 2
    except (UserError, OSError) as err:  # bad input, a missing file or a full disk: not a bug
        cause = getattr(err, "cause", None) or err  # an error raised in a Ray actor: the original
        print(f"rayfed: {cause}", file=sys.stderr)
        code = 2
    except WorkerLostError as err:  # raised in the driver actor: its message, not Ray's traceback
        print(f"rayfed: {getattr(err, 'cause', None) or err} (the last checkpoint is intact: "
              f"`rayfed resume` continues)", file=sys.stderr)
        code = 1
    for sig, handler in previous.items():
        # Interrupted (here, or a search Tune stopped on the first Ctrl-C): later ones stay ignored, so
        # Ray's shutdown at exit is not cut; otherwise as before (main may run inside another program).
        signal.signal(sig, signal.SIG_IGN if code > 128 else handler)
    return code


if __name__ == "__main__":
    sys.exit(main())
