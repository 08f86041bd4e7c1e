"""Run a study: every federated run and personalization its file implies, each through the
ordinary ``run_experiment``/``run_personalization``, into a fixed directory layout::

    OUT/c{concentration}/{algorithm}/lr{lr}/seed{seed}/            a federated run
    OUT/c{concentration}/{algorithm}/lr{lr}/seed{seed}/personalize/{name}/

The global prompt's scores and trained local prompts are kept in each run's ``prompt_cache/``
(scored once for all of that run's personalizations), and its personalizations share one set of
worker actors, started by the first that runs (``personalization_driver``). A job whose
``summary.json`` exists is skipped, and a federated run with only a checkpoint is resumed, so
rerunning an interrupted study continues it. Learning rates of the federated
algorithms are chosen per concentration on the first seed: the best global validation ROUGE-L
of the final prompt (ties: the earlier lr in the grid). ``jobs.jsonl`` records each job's time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from rayfed.checkpoint import CHECKPOINT
from rayfed.study.config import StudyConfig, personalize_overrides, run_config


def run_dir(out: Path, label: str, concentration: float, lr: float, seed: int) -> Path:
    return out / f"c{concentration:g}" / label / f"lr{lr:g}" / f"seed{seed}"


def selected_lrs(s: StudyConfig, out: Path, concentration: float) -> dict[str, float]:
    """Each algorithm's lr for ``concentration``: the only one, or the best on global validation
    ROUGE-L among the first seed's finished runs (KeyError when one has not finished)."""
    chosen = {}
    for label, arm in s.algorithms.items():
        scores = [_read(run_dir(out, label, concentration, lr, s.seeds[0]) / "summary.json")["final_val"]["rouge_l"]
                  for lr in arm.lrs] if len(arm.lrs) > 1 else [0.0]
        chosen[label] = arm.lrs[max(range(len(scores)), key=lambda i: (scores[i], -i))]
    return chosen


def run_study(s: StudyConfig, out: Path, log: Callable[[str], None] = print) -> None:
    """Run every job not yet finished (see the module docstring for the order and layout)."""
    from rayfed.experiment import personalization_driver, resume_experiment, run_experiment, run_personalization

    out.mkdir(parents=True, exist_ok=True)
    (out / "study.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(s)))
    total = progress(s, out)[1]
    seen: set[Path] = set()  # the first seed's selected run comes up twice: while selecting and in its seed

    def job(kind: str, path: Path, work: Callable[[], Any]) -> None:
        if path in seen:
            return
        seen.add(path)
        if (path / "summary.json").is_file():
            return
        log(f"study: job {len(seen)}/{total}: {kind} {path.relative_to(out)}{_estimate(out, total - len(seen) + 1)}")
        started = time.perf_counter()
        work()
        record = {"job": str(path.relative_to(out)), "kind": kind, "seconds": round(time.perf_counter() - started, 1)}
        with open(out / "jobs.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def federated(label: str, conc: float, seed: int, lr: float) -> Path:
        path = run_dir(out, label, conc, lr, seed)
        if (path / CHECKPOINT).is_file() and not (path / "summary.json").is_file():
            job("resume", path, lambda: resume_experiment(path))
        else:
            job("run", path, lambda: run_experiment(run_config(s, label, conc, seed, lr, output_dir=str(path)),
                                                    overwrite=True))
        return path

    # Learning-rate selection: the first seed's run at every lr of every algorithm.
    for conc in s.concentrations:
        for label, arm in s.algorithms.items():
            for lr in arm.lrs if len(arm.lrs) > 1 else []:
                federated(label, conc, s.seeds[0], lr)
    lrs = {conc: selected_lrs(s, out, conc) for conc in s.concentrations}
    # Then, seed by seed (so a stopped study has whole seeds), every algorithm and its personalizations.
    for seed in s.seeds:
        for conc in s.concentrations:
            for label in s.algorithms:
                path = federated(label, conc, seed, lrs[conc][label])
                # A run's personalizations share its workers, started by the first that runs.
                with ExitStack() as stack:
                    driver = _on_first_use(stack, lambda path=path: personalization_driver(path))
                    for name, overrides in personalize_overrides(s, label).items():
                        job("personalize", path / "personalize" / name,
                            lambda path=path, overrides=overrides, driver=driver: run_personalization(
                                path, overrides, prompt_cache=path / "prompt_cache", driver=driver()))


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
    select = {run_dir(out, label, conc, lr, s.seeds[0]) for conc in s.concentrations
              for label, arm in s.algorithms.items() if len(arm.lrs) > 1 for lr in arm.lrs}
    per_seed = sum(1 + len(personalize_overrides(s, label)) for label in s.algorithms) * len(s.concentrations)
    total = len(select) + per_seed * len(s.seeds) - len([a for a in s.algorithms.values() if len(a.lrs) > 1]) * len(
        s.concentrations)
    done = {path for path in select if (path / "summary.json").is_file()}
    try:
        lrs = {conc: selected_lrs(s, out, conc) for conc in s.concentrations}
    except (FileNotFoundError, KeyError):
        return len(done), total
    for seed in s.seeds:
        for conc in s.concentrations:
            for label in s.algorithms:
                path = run_dir(out, label, conc, lrs[conc][label], seed)
                jobs = [path, *(path / "personalize" / name for name in personalize_overrides(s, label))]
                done |= {job for job in jobs if (job / "summary.json").is_file()}
    return len(done), total


def _estimate(out: Path, left: int) -> str:
    """``; about N h left``: the jobs left (this one included) at the mean time of those recorded."""
    path = out / "jobs.jsonl"
    seconds = [json.loads(line)["seconds"] for line in path.read_text(encoding="utf-8").splitlines()] \
        if path.is_file() else []
    return f"; about {left * sum(seconds) / len(seconds) / 3600:.1f} h left" if seconds else ""


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))
