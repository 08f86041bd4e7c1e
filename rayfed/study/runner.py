"""Run a study: every federated run and personalization its file implies, each through the
ordinary ``run_experiment``/``run_personalization``, into a fixed directory layout::

    OUT/c{concentration}/{algorithm}/lr{lr}/seed{seed}/            a federated run
    OUT/c{concentration}/{algorithm}/lr{lr}/seed{seed}/personalize/{name}/

The global prompt's scores and trained local prompts are kept in each run's ``prompt_cache/``
(scored once for all of that run's personalizations), and its personalizations share one set of
worker actors, started by the first that runs (``personalization_driver``). A job whose
``summary.json`` exists is skipped, and a federated run with only a checkpoint is resumed, so
rerunning an interrupted study continues it; a finished job whose ``config.yaml`` says it
computed something else (another study wrote into the same directory) stops the study before it
writes anything, naming the keys that differ. Learning rates of the federated
algorithms are chosen per concentration on the first seed: the best global validation ROUGE-L
of the final prompt (ties: the earlier lr in the grid). ``jobs.jsonl`` records each job's time.

A federated run and its personalizations form a *chain*. Chains run one after another, or with
``parallel_runs`` above 1 that many at once, each a Ray task whose process and actors are held
in one placement group (on a cluster, or several runs sharing a GPU). Every job's numbers depend
only on its config and seed, so they are the same either way.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from rayfed.config import ExperimentConfig
from rayfed.outputs.checkpoint import CHECKPOINT
from rayfed.study.config import StudyConfig, personalize_jobs, run_config
from rayfed.study.layout import run_dir, selected_lrs


@dataclass(frozen=True)
class Job:
    """One unfinished job: a federated run (``run``; resumed when it left a checkpoint) or one
    personalization of it (the typed ``personalize.*`` ``values`` it sets on the run's config),
    numbered in the order a sequential study meets it."""

    number: int
    kind: str
    path: Path
    values: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Chain:
    """A federated run and the personalizations that follow it: the unit that runs in parallel."""

    label: str
    concentration: float
    seed: int
    lr: float
    jobs: tuple[Job, ...]


def run_study(s: StudyConfig, out: Path, log: Callable[[str], None] = print) -> None:
    """Run every job not yet finished (see the module docstring for the order and layout);
    ``s.parallel_runs`` chains at once, each a Ray task in its own placement group, when above 1."""
    if s.parallel_runs > 1:  # Ray tasks do not run in this directory (on a cluster, not on this node)
        out = out.resolve()
    check_finished_jobs(s, out)  # before study.yaml is replaced
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(s)))
    total = progress(s, out)[1]
    seen: set[Path] = set()  # the first seed's selected run comes up twice: while selecting and in its seed

    def chain(label: str, conc: float, seed: int, lr: float, personalize: bool) -> Chain:
        path, jobs = run_dir(out, label, conc, lr, seed), []
        names = personalize_jobs(s, label) if personalize else {}
        for kind, job_path, values in [("run", path, {}), *(("personalize", path / "personalize" / name, v)
                                                           for name, v in names.items())]:
            if job_path in seen:
                continue
            seen.add(job_path)
            if (job_path / "summary.json").is_file():
                continue
            jobs.append(Job(len(seen), kind, job_path, values))
        return Chain(label, conc, seed, lr, tuple(jobs))

    # Learning-rate selection: the first seed's run at every lr of every algorithm.
    run_chains(s, out, [chain(label, conc, s.seeds[0], lr, personalize=False) for conc in s.concentrations
                        for label, arm in s.algorithms.items() for lr in (arm.lrs if len(arm.lrs) > 1 else [])],
               total, log)
    lrs = {conc: selected_lrs(s, out, conc) for conc in s.concentrations}
    # Then, seed by seed (so a stopped sequential study has whole seeds), every algorithm and its
    # personalizations.
    run_chains(s, out, [chain(label, conc, seed, lrs[conc][label], personalize=True) for seed in s.seeds
                        for conc in s.concentrations for label in s.algorithms], total, log)


def check_finished_jobs(s: StudyConfig, out: Path) -> None:
    """:func:`check_finished_job` for every finished job already in ``out`` that this study could
    count as its own (any lr of a grid, any seed)."""
    for conc in s.concentrations:
        for label, arm in s.algorithms.items():
            for lr in arm.lrs:
                for seed in s.seeds:
                    path = run_dir(out, label, conc, lr, seed)
                    if not path.is_dir():
                        continue
                    run_cfg = run_config(s, label, conc, seed, lr, output_dir=str(path))
                    for job, values in [(path, {}), *((path / "personalize" / name, v)
                                                      for name, v in personalize_jobs(s, label).items())]:
                        if (job / "summary.json").is_file():
                            check_finished_job(job, run_cfg, values)


def check_finished_job(job: Path, run_cfg: ExperimentConfig, values: dict[str, Any]) -> None:
    """Refuse to count a finished job in ``job`` (``summary.json``) as this study's when its
    ``config.yaml`` says it computed something else: another study in the same output_dir (another
    source, grid or model) would otherwise be mixed silently into this one's tables.

    Raises:
        UserError: naming the job, up to six keys that differ, and the way out.
    """
    from rayfed.config import changes_text, config_changes, load_config, replace_keys
    from rayfed.errors import UserError

    if not (job / "config.yaml").is_file():
        raise UserError(f"{job} holds a summary.json but no config.yaml: it is not this study's job; choose "
                        "another output_dir, or move that directory away")
    changed = config_changes(load_config(job / "config.yaml"), replace_keys(run_cfg, values))
    if changed:
        raise UserError(f"{job} holds a finished job made with other settings than this study's "
                        f"({changes_text(changed, 'here', 'in the study')}): another study wrote into this "
                        "output_dir; give this study its own output_dir=PATH, or move that directory away")


def run_chains(s: StudyConfig, out: Path, chains: list[Chain], total: int, log: Callable[[str], None]) -> None:
    """Each chain's jobs in order: here, one chain after another, or ``s.parallel_runs`` at once as
    Ray tasks, each holding its process and actors in a placement group (``run_bundles``)."""
    chains = [c for c in chains if c.jobs]
    if s.parallel_runs == 1 or not chains:
        for c in chains:
            run_chain(s, out, c, total, log)
        return
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from rayfed.runtime.placement import bundle_selectors, check_bundles_fit, run_bundles
    from rayfed.runtime.ray_backend import placeable_resources, start_ray

    configs = [run_config(s, c.label, c.concentration, c.seed, c.lr) for c in chains]
    start_ray(configs[0].ray)
    bundles = [run_bundles(cfg, s.cpus_per_run) for cfg in configs]
    for cfg, b in zip(configs, bundles, strict=True):  # before any starts
        check_bundles_fit(cfg, b, placeable_resources(cfg.runtime.label_selector), "one study run", "cpus_per_run")
    task = ray.remote(max_retries=0)(run_chain)  # a failed chain stops the study; rerunning continues it
    waiting, running = list(zip(chains, bundles, configs, strict=True)), {}
    while waiting or running:
        while waiting and len(running) < s.parallel_runs:
            c, b, cfg = waiting.pop(0)
            group = placement_group(b, strategy="PACK", **bundle_selectors(cfg, b))
            strategy = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0,
                                                        placement_group_capture_child_tasks=True)
            ref = task.options(num_cpus=s.cpus_per_run, scheduling_strategy=strategy).remote(s, out, c, total)
            running[ref] = group
        done, _ = ray.wait(list(running), num_returns=1)
        group = running.pop(done[0])
        try:
            ray.get(done[0])  # a failed chain raises here (its finished jobs are kept)
        finally:
            remove_placement_group(group)


def run_chain(s: StudyConfig, out: Path, chain: Chain, total: int, log: Callable[[str], None] = print) -> None:
    """One chain's jobs in order; its personalizations share one set of workers, started by the
    first that runs. Each finished job appends its time to ``jobs.jsonl``."""
    from rayfed.config import replace_keys
    from rayfed.experiment import resume_experiment, run_experiment
    from rayfed.personalization.phase import open_finished_run, personalize_run

    path = run_dir(out, chain.label, chain.concentration, chain.lr, chain.seed)
    with ExitStack() as stack:
        finished = _on_first_use(stack, lambda: open_finished_run(path))
        for job in chain.jobs:
            if (job.path / "summary.json").is_file():  # finished since the chain was planned
                continue
            kind = "resume" if job.kind == "run" and (path / CHECKPOINT).is_file() else job.kind
            log(f"study: job {job.number}/{total}: {kind} {job.path.relative_to(out)}"
                f"{_estimate(s, out)}")
            started = time.perf_counter()
            if kind == "run":
                run_experiment(run_config(s, chain.label, chain.concentration, chain.seed, chain.lr,
                                          output_dir=str(path)), overwrite=True)
            elif kind == "resume":
                resume_experiment(path)
            else:
                cfg, global_prompt, driver = finished()
                personalize_run(path, replace_keys(cfg, job.values), global_prompt, job.path.name,
                                prompt_cache=path / "prompt_cache", driver=driver)
            from rayfed.runtime.machine import machine

            # Where it ran (Ray prefixes a parallel run's log lines with its pid), and what its floats
            # depend on beyond its config and seed: CPU, torch's kernels, device (docs/study.md).
            record = {"job": str(job.path.relative_to(out)), "kind": kind,
                      "seconds": round(time.perf_counter() - started, 1), "pid": os.getpid(), **machine()}
            with open(out / "jobs.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def _on_first_use(stack: ExitStack, open_context: Callable[[], Any]) -> Callable[[], Any]:
    """A getter that enters ``open_context()`` into ``stack`` the first time it is called (so the
    time it takes counts in the first job that needs it) and returns the same value after."""
    value: list[Any] = []

    def get() -> Any:
        if not value:
            value.append(stack.enter_context(open_context()))
        return value[0]

    return get


def progress(s: StudyConfig, out: Path) -> tuple[int, int]:
    """``(finished, total)`` distinct jobs: the selection runs, then every seed's runs and
    personalizations (at the selected lrs, once they are known)."""
    counts = progress_by_kind(s, out)
    return sum(done for done, _ in counts.values()), sum(total for _, total in counts.values())


def progress_by_kind(s: StudyConfig, out: Path) -> dict[str, tuple[int, int]]:
    """``{"run": (finished, total), "personalize": (finished, total)}``."""
    select = {run_dir(out, label, conc, lr, s.seeds[0]) for conc in s.concentrations
              for label, arm in s.algorithms.items() if len(arm.lrs) > 1 for lr in arm.lrs}
    selected_twice = len([a for a in s.algorithms.values() if len(a.lrs) > 1]) * len(s.concentrations)
    runs = len(select) + len(s.seeds) * len(s.concentrations) * len(s.algorithms) - selected_twice
    personalizations = len(s.seeds) * len(s.concentrations) * sum(len(personalize_jobs(s, label))
                                                                  for label in s.algorithms)
    done = {path for path in select if (path / "summary.json").is_file()}
    done_personalizations: set[Path] = set()
    try:
        lrs = {conc: selected_lrs(s, out, conc) for conc in s.concentrations}
    except (FileNotFoundError, KeyError):
        lrs = {}
    for seed in s.seeds if lrs else []:
        for conc in s.concentrations:
            for label in s.algorithms:
                path = run_dir(out, label, conc, lrs[conc][label], seed)
                done |= {path} if (path / "summary.json").is_file() else set()
                done_personalizations |= {job for name in personalize_jobs(s, label)
                                          if ((job := path / "personalize" / name) / "summary.json").is_file()}
    return {"run": (len(done), runs), "personalize": (len(done_personalizations), personalizations)}


def _estimate(s: StudyConfig, out: Path) -> str:
    """``; about N h left``: the unfinished jobs (the one starting included) at the median recorded
    time of their kind (runs and personalizations), divided among parallel runs."""
    path = out / "jobs.jsonl"
    recorded = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.is_file() else []
    left = {kind: total - done for kind, (done, total) in progress_by_kind(s, out).items()}
    return estimate_text(recorded, left, s.parallel_runs)


def estimate_text(recorded: list[dict[str, Any]], left: dict[str, int], parallel_runs: int = 1) -> str:
    """The estimate from recorded jobs (a resume counts as a run; a kind not yet recorded takes
    the median of all). Medians, so that one job that waited (a suspended process, a machine
    shared for an hour) does not stretch every estimate after it."""
    if not recorded:
        return ""
    seconds: dict[str, list[float]] = {}
    for job in recorded:
        seconds.setdefault("run" if job["kind"] == "resume" else job["kind"], []).append(job["seconds"])
    overall = statistics.median(j["seconds"] for j in recorded)
    total = sum(n * (statistics.median(seconds[k]) if k in seconds else overall) for k, n in left.items())
    return f"; about {total / parallel_runs / 3600:.1f} h left"
