"""A study's results bundle: the numbers-only files its report is computed from, copied so that
a reader can recompute every table and figure (``rayfed study STUDY output_dir=BUNDLE
--report-only``) without rerunning a job. Summaries, records, per-example scores (ids and
scores, never example text), configs and the global prompts; no checkpoints, no caches of local
prompts, no W&B files.

A bundle is also how a study moves to another machine before it has finished: it holds every
finished job (a run with its final global prompt, a personalization with its summary), so
``rayfed study STUDY output_dir=BUNDLE`` there skips those and runs only the rest. A job that had
not finished is left out, and starts over.
"""

from __future__ import annotations

import shutil
from pathlib import Path

TOP = ("study.yaml", "jobs.jsonl")
RUN = ("summary.json", "metrics.jsonl", "config.yaml", "global_prompt.safetensors", "example_scores.safetensors",
       "ditto_scores.safetensors")  # the last: a Ditto run's clients' own prompts (``@ditto`` points)
PERSONALIZATION = ("summary.json", "personalization.jsonl", "config.yaml", "example_scores.safetensors")


def write_bundle(out: Path, dest: Path) -> list[Path]:
    """Copy the bundle's files of study directory ``out`` into ``dest`` (same layout); returns them.

    Raises:
        FileNotFoundError: ``out`` holds no study (no ``study.yaml``).
    """
    if not (out / "study.yaml").is_file():
        raise FileNotFoundError(f"{out} holds no study (no study.yaml)")
    files = [out / name for name in TOP if (out / name).is_file()]
    for summary in sorted(out.glob("c*/*/lr*/seed*/summary.json")):
        run = summary.parent
        files += [run / name for name in RUN if (run / name).is_file()]
        for job in sorted((run / "personalize").glob("*/summary.json")):  # finished ones only
            files += [job.parent / name for name in PERSONALIZATION if (job.parent / name).is_file()]
    copied = []
    for path in files:
        target = dest / path.relative_to(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        copied.append(target)
    return copied
