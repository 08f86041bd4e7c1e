"""A search's output directory (``rayfed tune``): what may start, continue or replace a search
there, so that one search's trials, base run or cached prompts never pass for another's.

A directory holds a search when it has any of :data:`SEARCH_ENTRIES` (Tune's state, the trials'
runs, the base run, the results). Starting a search there is refused unless ``--resume``
continues it with the settings it was started with (``config.yaml``, every key but where and
how it runs) or ``--overwrite`` clears it first. A directory that holds a run (``rayfed run``)
is never a search's.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rayfed.config import HOW_IT_RAN, ExperimentConfig, changes_text, config_changes, load_config
from rayfed.errors import UserError
from rayfed.outputs.checkpoint import CHECKPOINT

# What a search writes into its output_dir (rayfed.tuning); --overwrite removes these and nothing else.
SEARCH_ENTRIES = ("tune", "trials", "base", "local_prompts", "results.csv", "pareto.csv", "search.json",
                  "pareto.png", "config.yaml")
# Keys a resumed search may change: where and how its remaining trials run (not its name, which
# names the trials' personalizations and W&B group).
RESUMABLE = (*(k for k in HOW_IT_RAN if k != "name."), "tune.max_concurrent_trials.", "tune.cpus_per_trial.")


class SearchExistsError(UserError):
    """A search would start in a directory that already holds one."""


def open_search_dir(cfg: ExperimentConfig, out: Path, *, resume: bool, overwrite: bool) -> None:
    """Check that a search configured by ``cfg`` may run in ``out`` (held under its lock).

    Raises:
        UserError: ``out`` holds a run; or it holds a search and neither ``resume`` nor
            ``overwrite`` is set (:class:`SearchExistsError`); or ``resume`` is set and the search
            there was started with other settings, naming up to six keys that differ.
    """
    if (out / "summary.json").is_file() or (out / CHECKPOINT).is_file():
        raise UserError(f"key 'output_dir': {out} holds a run (rayfed run), not a search; give the search its "
                        "own output_dir=PATH (a personalize search reads a finished run through tune.base_run)")
    held = [name for name in SEARCH_ENTRIES if (out / name).exists()]
    if not held:
        return
    if overwrite:
        for name in held:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        return
    if not resume:
        raise SearchExistsError(f"{out} already holds a search ({', '.join(held)}): continue it with "
                                "`rayfed tune CONFIG --resume` (the same config and overrides), choose another "
                                "output_dir, or start over with --overwrite")
    saved = out / "config.yaml"
    if not saved.is_file():
        raise UserError(f"{out} holds a search's files ({', '.join(held)}) but no config.yaml, so what they "
                        "computed cannot be checked; choose another output_dir, or start over with --overwrite")
    changed = config_changes(load_config(saved), cfg, ignore=RESUMABLE)
    if changed:
        raise UserError(f"{out} holds a search started with other settings ({changes_text(changed, 'there', 'now')}); "
                        "resume it with the config and overrides it was started with, choose another output_dir, "
                        "or start over with --overwrite")
